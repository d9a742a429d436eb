"""Pruning, the pure part: checkpoints, the median and ASHA rules on synthetic curves, and batch
reproducibility through the real scheduler."""

from __future__ import annotations

import math
import random

import pytest

from taxi_hpo.search import TPESearcher, TrialOutcome, reference_space, run_search
from taxi_hpo.search.pruning import Pruner, checkpoints, should_stop


def test_checkpoints_are_successive_halving_rungs_below_the_rounds():
    assert checkpoints(30) == [3, 9, 27]
    assert checkpoints(100) == [11, 33, 99]
    assert checkpoints(5) == [2]
    assert checkpoints(2) == []
    assert checkpoints(81, eta=3, first=1) == [1, 3, 9, 27]
    with pytest.raises(ValueError):
        checkpoints(0)


def curve(level: float, rounds=(3, 9, 27)) -> dict[int, float]:
    """A learning curve that ends at ``level`` (RMSE falls with the rounds)."""
    return {r: level + 3.0 / r for r in rounds}


def test_median_rule_waits_for_five_trials_then_cuts_above_the_median():
    pruner = Pruner("median", rounds=30)
    for trial_id, level in enumerate([6.0, 6.5, 7.0, 7.5]):
        pruner.record(trial_id, curve(level))
    assert all(math.isinf(t) for t in pruner.thresholds().values())  # 4 < 5 finished
    pruner.record(4, curve(8.0))
    thresholds = pruner.thresholds()
    assert thresholds[3] == pytest.approx(7.0 + 1.0) and thresholds[27] == pytest.approx(7.0 + 3.0 / 27)
    assert should_stop(3, 8.2, thresholds) and not should_stop(3, 7.9, thresholds)
    assert not should_stop(4, 99.0, thresholds)  # not a checkpoint


def test_asha_keeps_the_best_third_at_each_rung():
    pruner = Pruner("asha", rounds=30)
    pruner.record(0, curve(6.0))
    pruner.record(1, curve(7.0))
    assert math.isinf(pruner.thresholds()[3])  # fewer than eta values at the rung
    pruner.record(2, curve(8.0))
    assert pruner.thresholds()[3] == pytest.approx(6.0 + 1.0)  # best 1 of 3 goes on
    for trial_id, level in enumerate([6.5, 6.6, 6.7], start=3):
        pruner.record(trial_id, curve(level))
    assert pruner.thresholds()[3] == pytest.approx(6.5 + 1.0)  # best 2 of 6
    # A pruned trial reached only its first rung: it counts there, not further up.
    pruner.record(9, {3: 5.0})
    assert pruner.thresholds()[3] == pytest.approx(7.0)  # best 2 of 7: 5.0 and 7.0
    assert pruner.thresholds()[9] == pytest.approx(6.5 + 3.0 / 9)


def test_no_rule_no_checkpoints_and_bad_rules():
    pruner = Pruner("none", rounds=30)
    assert not pruner.active and pruner.thresholds() == {}
    with pytest.raises(ValueError):
        Pruner("hyperband", rounds=30)
    pruner = Pruner("median", rounds=30)
    pruner.record(0, {3: float("nan"), 9: 6.0})  # a diverged value is not a peer's RMSE
    assert pruner._curves[0] == {9: 6.0}


class CurveRunner:
    """A TrialRunner whose trials follow synthetic curves and stop where their thresholds say;
    completions come back in a scrambled order, as from a real cluster."""

    def __init__(self, pruner: Pruner, seed: int):
        self.pruner, self.rng = pruner, random.Random(seed)
        self.pending: dict[int, TrialOutcome] = {}

    def submit(self, trial_id, params, priority):
        thresholds = self.pruner.thresholds()
        level = 6.0 + abs(math.log(params["learning_rate"] / 0.3)) + params["max_depth"] / 50
        full = curve(level)
        seen, pruned = {}, None
        for r, v in full.items():
            seen[r] = v
            if should_stop(r, v, thresholds):
                pruned = r
                break
        self.pending[trial_id] = TrialOutcome(trial_id, params, seen[max(seen)], curve=seen, pruned_at=pruned)
        return trial_id

    def wait_any(self, handles):
        handles = list(handles)
        self.rng.shuffle(handles)
        return handles[: 1 + self.rng.randrange(len(handles))]

    def outcome(self, handle):
        return self.pending.pop(handle)


def search_with_pruning(mode: str, order_seed: int) -> list[TrialOutcome]:
    pruner = Pruner("asha", rounds=30)
    outcomes = run_search(
        TPESearcher(reference_space(40), seed=5, n_startup_jobs=8),
        CurveRunner(pruner, order_seed),
        24,
        mode=mode,
        in_flight=4,
        on_outcome=lambda o: pruner.record(o.trial_id, o.curve),
    )
    return outcomes


def test_batch_mode_with_pruning_does_not_depend_on_completion_order():
    runs = [search_with_pruning("batch", order_seed) for order_seed in (1, 2, 3)]
    signature = [[(o.params["max_depth"], o.loss, o.pruned_at) for o in run] for run in runs]
    assert signature[0] == signature[1] == signature[2]
    assert any(o.pruned_at for o in runs[0]) and all(
        o.pruned_at is None for o in runs[0][:4]
    )  # batch 1: no peers


def test_a_pruned_trial_never_qualifies_for_registration_even_when_lowest():
    from taxi_hpo.registry import qualifying

    fast = {"inference_time": 1e-6}
    complete = TrialOutcome(0, {}, 6.5, run_id="a", metrics=fast)
    pruned = TrialOutcome(1, {}, 6.0, run_id="b", metrics=fast, pruned_at=9)
    assert [o.run_id for o in qualifying([complete, pruned], max_rmse=7.0, max_inference_time=1e-5)] == ["a"]
    assert pruned.ok and not pruned.complete and complete.complete
