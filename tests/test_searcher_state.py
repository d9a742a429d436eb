"""The searcher's state round-trips: rebuilt from ``state()`` (through JSON), it goes on with the
very points the original would have proposed, pending trials and failures included."""

from __future__ import annotations

import json

import pytest

from taxi_hpo.search import Searcher, TPESearcher, reference_space


def _loss(params: dict) -> float:
    return 6.0 + params["learning_rate"] + params["max_depth"] / 100


@pytest.mark.parametrize(
    "warm",
    [
        [],
        [
            {
                "max_depth": 7,
                "learning_rate": 0.1,
                "reg_alpha": 0.01,
                "reg_lambda": 0.001,
                "min_child_weight": 2.0,
                "objective": "reg:squarederror",
                "seed": 42,
            }
        ],
    ],
)
def test_a_searcher_rebuilt_from_its_state_proposes_the_same_points(warm):
    space = reference_space(20)
    original = TPESearcher(space, seed=3, n_startup_jobs=3, warm_points=warm)
    assert isinstance(original, Searcher)  # what the scheduler is typed against
    for tid in range(6):  # past the random start-up, so TPE models the history
        original.suggest(tid)
    for tid in range(5):  # trial 5 stays pending; trial 2 failed
        original.record(tid, None if tid == 2 else _loss(original.params(tid)))
    state = json.loads(json.dumps(original.state()))
    rebuilt = TPESearcher.from_state(space, state)
    assert rebuilt.state() == state
    for tid in range(6, 10):
        expected = original.suggest(tid)
        assert rebuilt.suggest(tid) == expected
        original.record(tid, _loss(expected))
        rebuilt.record(tid, _loss(expected))
    assert rebuilt.best() == original.best()


def test_a_state_of_another_kind_is_refused():
    with pytest.raises(ValueError, match="not the state of a TPE searcher"):
        TPESearcher.from_state(reference_space(20), {"kind": "random"})
