"""Lower fidelities, the pure part: a row sample kept to its own columns fits the trees all
columns would, and the promotion ladder (ASHA's promote rule) on synthetic results."""

from __future__ import annotations

import math

import numpy as np
import pytest

from taxi_hpo.core import features, models
from taxi_hpo.search import TrialOutcome, reference_space, run_search
from taxi_hpo.search.multifidelity import MultiFidelitySearcher
from taxi_hpo.search.promotion import AUTO, COMPLETE, Promoter, Rung, ladder

# --- the row sample -------------------------------------------------------------------------


def test_a_row_sample_is_fixed_by_its_seed_and_keeps_only_its_columns(prepared):
    sample = features.row_sample(prepared, 1 / 9, seed=3)
    n = prepared.X_train.shape[0]
    assert sample.X_train.shape[0] == round(n / 9)
    assert sample.y_valid is prepared.y_valid and sample.X_valid.shape[0] == prepared.X_valid.shape[0]
    # every kept column has a value in the sample, and no column with a value was dropped
    assert (np.diff(sample.X_train.tocsc().indptr) > 0).all()
    assert sample.X_train.nnz == prepared.X_train[np.isin(np.arange(n), _rows(prepared, sample))].nnz
    assert sample.X_train.shape[1] == len(sample.columns) < prepared.X_train.shape[1]
    assert sample.X_valid.shape[1] == len(sample.columns)
    again = features.row_sample(prepared, 1 / 9, seed=3)
    assert np.array_equal(again.y_train, sample.y_train) and again.key == sample.key
    other = features.row_sample(prepared, 1 / 9, seed=4)
    assert other.key != sample.key and not np.array_equal(other.y_train, sample.y_train)
    assert len({prepared.key, sample.key, features.row_sample(prepared, 1 / 3, seed=3).key}) == 3
    with pytest.raises(ValueError):
        features.row_sample(sample, 1 / 3)
    with pytest.raises(ValueError):
        features.row_sample(prepared, 0.0)


def _rows(prepared, sample) -> np.ndarray:
    """The training rows a sample drew (as row_sample draws them)."""
    n = prepared.X_train.shape[0]
    seed = int(sample.sample.split("seed=")[1])
    return np.sort(np.random.default_rng(seed).choice(n, sample.X_train.shape[0], replace=False))


def test_the_compact_sample_fits_the_trees_all_columns_would(prepared):
    import xgboost as xgb

    sample = features.row_sample(prepared, 1 / 27, seed=1)
    rows = _rows(prepared, sample)
    params = {"max_depth": 6, "learning_rate": 0.3, "nthread": 1, "objective": "reg:squarederror"}
    wide = xgb.train(params, xgb.DMatrix(prepared.X_train[rows], label=prepared.y_train[rows]), 5)
    narrow = xgb.train(params, xgb.DMatrix(sample.X_train, label=sample.y_train), 5)
    on_all = wide.predict(xgb.DMatrix(prepared.X_valid))
    on_kept = narrow.predict(xgb.DMatrix(sample.X_valid))
    assert np.allclose(on_all, on_kept, atol=1e-4)
    assert models.rmse(prepared.y_valid, on_kept) == pytest.approx(
        models.rmse(prepared.y_valid, on_all), abs=1e-5
    )


def test_a_sample_gets_matrices_of_its_own_in_the_process_cache(prepared):
    sample = features.row_sample(prepared, 1 / 9, seed=0)
    full_train, _ = models.matrices(prepared)
    sample_train, sample_valid = models.matrices(sample)
    assert sample_train is not full_train and sample_train.num_row() == sample.X_train.shape[0]
    assert sample_valid.num_col() == len(sample.columns)
    assert models.matrices(sample)[0] is sample_train


# --- the ladder -----------------------------------------------------------------------------


def test_a_ladder_ends_complete_and_has_only_one_complete_rung():
    assert AUTO[-1] == COMPLETE and COMPLETE.complete and not AUTO[0].complete
    with pytest.raises(ValueError):
        Promoter([Rung(1 / 9, 9)])
    with pytest.raises(ValueError):
        Promoter([COMPLETE, COMPLETE])
    with pytest.raises(ValueError):
        Rung(0.0, 9)
    with pytest.raises(ValueError):
        Rung(0.5, 0)


def test_the_best_third_of_a_rung_is_promoted_each_once_as_results_come():
    promoter = Promoter(AUTO)
    promoter.record(0, 0, 7.0)
    promoter.record(1, 0, 6.0)
    assert promoter.take() is None  # 2 results: the best third is nobody yet
    promoter.record(2, 0, 8.0)
    assert promoter.take() == (1, 1)  # 3 results: the best one
    assert promoter.take() is None  # taken once
    for config, loss in [(3, 9.0), (4, 9.5), (5, 6.5)]:
        promoter.record(config, 0, loss)
    # 6 results: the best two are 1 (taken) and 5
    assert promoter.take() == (5, 1) and promoter.take() is None
    for config, loss in [(6, 5.0), (7, 9.9), (8, 9.8)]:
        promoter.record(config, 0, loss)
    # 9 results: best three 6, 1, 5: a configuration judged late still goes up
    assert promoter.take() == (6, 1) and promoter.take() is None


def test_higher_rungs_promote_first_and_failures_never_go_up():
    ladder = (Rung(1 / 9, 9), Rung(1 / 3, 9), COMPLETE)
    promoter = Promoter(ladder)
    for config, loss in [(0, None), (1, float("nan")), (2, math.inf)]:
        promoter.record(config, 0, loss)
    assert promoter.take() is None  # three failures: nothing to promote
    for config, loss in [(3, 7.0), (4, 7.1), (5, 7.2)]:
        promoter.record(config, 0, loss)
    assert promoter.take() == (3, 1)
    for config, loss in [(10, 6.0), (11, 6.1), (12, 6.2)]:
        promoter.record(config, 1, loss)
    assert promoter.promotable() == [(10, 2), (4, 1)]  # the higher rung first
    assert promoter.take() == (10, 2)


def test_the_same_results_in_the_same_order_make_the_same_promotions():
    import random

    def run(seed_of_losses: int) -> list[tuple[int, int]]:
        rng = random.Random(seed_of_losses)
        promoter, taken = Promoter(AUTO), []
        for config in range(40):
            promoter.record(config, 0, round(rng.uniform(6, 8), 1))  # ties: broken by id
            while (p := promoter.take()) is not None:
                taken.append(p)
                promoter.record(p[0], p[1], rng.uniform(5, 7))
        return taken

    assert run(1) == run(1) and run(1) != run(2)
    assert 40 // 3 <= len(run(1)) < 40  # at least the final best third, never everyone


# --- the multi-fidelity searcher over the scheduler ------------------------------------------


def _rung_loss(params: dict, fidelity: dict) -> float:
    """A stand-in RMSE: best near depth 10, learning rate 0.3; a lower rung is worse and ranks a
    little differently (a share of the depth term), as a row sample does."""
    depth, rate = params["max_depth"], params["learning_rate"]
    complete = (math.log(rate) - math.log(0.3)) ** 2 + (depth - 10) ** 2 / 100 + 6
    return complete if fidelity["complete"] else complete + 0.5 + (depth % 7) / 20


class LadderRunner:
    """A real TrialRunner over a thread pool that fits each trial at the searcher's fidelity, with
    random durations so trials finish in another order than they started."""

    def __init__(self, searcher, workers: int = 3, seed: int = 0):
        import concurrent.futures as cf
        import random

        self.searcher, self.cf = searcher, cf
        self.pool, self.rng, self.futures = cf.ThreadPoolExecutor(workers), random.Random(seed), {}

    def _work(self, trial_id, params, fidelity, delay):
        import time

        time.sleep(delay)
        return TrialOutcome(trial_id, params, _rung_loss(params, fidelity), fidelity=fidelity)

    def submit(self, trial_id, params, priority):
        fidelity = self.searcher.fidelity(trial_id)
        self.futures[trial_id] = self.pool.submit(
            self._work, trial_id, params, fidelity, self.rng.random() * 0.01
        )
        return trial_id

    def wait_any(self, handles, timeout=None):
        done, _ = self.cf.wait([self.futures[h] for h in handles], return_when=self.cf.FIRST_COMPLETED)
        return [h for h in handles if self.futures[h] in done]

    def outcome(self, handle):
        return self.futures.pop(handle).result()

    def stop(self, handles):  # pragma: no cover - no budget here
        pass


def _search(mode: str, seed: int, jitter_seed: int, n: int = 40, known=None, searcher=None):
    searcher = searcher or MultiFidelitySearcher(reference_space(20), seed, n_startup_jobs=10)
    runner = LadderRunner(searcher, seed=jitter_seed)
    outcomes = run_search(searcher, runner, n, mode=mode, in_flight=3, known=known)
    runner.pool.shutdown()
    return searcher, outcomes


def test_batch_mode_with_a_ladder_repeats_exactly_whatever_the_finishing_order():
    _, first = _search("batch", seed=5, jitter_seed=1)
    _, again = _search("batch", seed=5, jitter_seed=2)
    assert [(o.params, o.fidelity, o.loss) for o in first] == [(o.params, o.fidelity, o.loss) for o in again]
    _, other_seed = _search("batch", seed=6, jitter_seed=1)
    assert [o.params for o in other_seed] != [o.params for o in first]


def test_the_best_third_of_a_rung_is_fitted_again_one_rung_up_and_only_complete_fits_count_as_best():
    searcher, outcomes = _search("batch", seed=3, jitter_seed=0)
    by_id = {o.trial_id: o for o in outcomes}
    low = [o for o in outcomes if o.fidelity["rung"] == 0]
    promoted = [o for o in outcomes if o.fidelity["rung"] == 1]
    assert low and promoted and len(low) + len(promoted) == 40
    for o in promoted:
        first = by_id[o.fidelity["promoted_from"]]
        assert first.fidelity["rung"] == 0 and first.params == o.params
        assert o.fidelity["config"] == first.trial_id and o.trial_id > first.trial_id
        assert o.complete and not first.complete
        # it ranked in the best third of the rung-0 results recorded before its batch (of 3)
        before = sorted(x.loss for x in low if x.trial_id < o.trial_id // 3 * 3)
        assert first.loss <= before[len(before) // 3 - 1]
    assert all(o.fidelity["rows"] == pytest.approx(1 / 9) and o.fidelity["rounds"] == 9 for o in low)
    trial_id, loss = searcher.best()
    assert by_id[trial_id].complete and loss == min(o.loss for o in promoted)


def test_a_resumed_ladder_search_goes_on_with_the_trials_and_promotions_of_an_uninterrupted_one():
    _, whole = _search("batch", seed=4, jitter_seed=0, n=30)
    known = {o.trial_id: o for o in whole[:15]}
    _, resumed = _search("batch", seed=4, jitter_seed=3, n=30, known=known)
    assert [(o.params, o.fidelity) for o in resumed] == [(o.params, o.fidelity) for o in whole]
    # async: the known trials are added with their rungs, the rest goes on from there
    searcher = MultiFidelitySearcher(reference_space(20), 4, n_startup_jobs=10)
    for o in whole[:15]:
        searcher.add_finished(o.trial_id, o.params, o.loss, o.fidelity)
    assert searcher.best() == min(
        ((o.trial_id, o.loss) for o in whole[:15] if o.complete), key=lambda t: t[1], default=None
    )
    next_fit = searcher.suggest(15)
    assert isinstance(next_fit, dict) and searcher.fidelity(15)["rung"] in (0, 1)
    # a promotion already made is not made again
    promoted_before = {o.fidelity["config"] for o in whole[:15] if o.fidelity["rung"] == 1}
    if searcher.fidelity(15)["rung"] == 1:
        assert searcher.fidelity(15)["config"] not in promoted_before


def test_the_ladders_by_name():
    assert ladder("auto") == AUTO
    assert [r.complete for r in ladder("rows")] == [False, True] and ladder("rows")[0].rounds is None
    assert ladder("rounds")[0] == Rung(1.0, 9)
    with pytest.raises(ValueError):
        ladder("none")


def test_a_ladder_searcher_rebuilt_from_its_state_goes_on_with_the_same_trials():
    """Mid-search, trials in flight at both rungs: the rebuilt searcher suggests what the
    original would (plain JSON in between, as a state is stored)."""
    import json

    space = reference_space(20)
    original = MultiFidelitySearcher(space, 8, n_startup_jobs=6)
    for trial_id in range(14):
        original.suggest(trial_id)
        if trial_id % 4 != 3:  # every fourth trial still running
            original.record(trial_id, _rung_loss(original.params(trial_id), original.fidelity(trial_id)))
    rebuilt = MultiFidelitySearcher.from_state(space, json.loads(json.dumps(original.state())))
    assert rebuilt.state() == original.state()
    for trial_id in range(14, 24):
        point = original.suggest(trial_id)
        assert rebuilt.suggest(trial_id) == point and rebuilt.fidelity(trial_id) == original.fidelity(
            trial_id
        )
        for s in (original, rebuilt):
            s.record(trial_id, _rung_loss(point, s.fidelity(trial_id)))
    with pytest.raises(ValueError):
        MultiFidelitySearcher.from_state(space, {"kind": "tpe"})


def _drive(model: str, trials: int = 20) -> tuple[MultiFidelitySearcher, list[tuple[dict, dict, dict]]]:
    """A ladder search on synthetic losses; after each result: (what TPE is told, the cheap
    losses, the complete ones) by configuration."""
    searcher = MultiFidelitySearcher(reference_space(10), seed=1, n_startup_jobs=2, model=model)
    cheap, complete, seen = {}, {}, []
    for trial in range(trials):
        searcher.suggest(trial)
        fidelity = searcher.fidelity(trial)
        config = fidelity["config"]
        if fidelity["complete"]:
            complete[config] = cheap[config] - 0.5 - 0.1 * (config % 3)
        else:
            cheap[config] = 7.0 + 0.1 * ((config * 7) % 11)
        searcher.record(trial, complete[config] if fidelity["complete"] else cheap[config])
        seen.append((searcher.observations(), dict(cheap), dict(complete)))
    return searcher, seen


def test_the_merged_model_tells_tpe_complete_fits_and_the_rest_moved_onto_their_scale():
    for told, cheap, _ in _drive("lowest")[1]:
        assert told == cheap  # the lowest rung, whatever the complete fits say
    merged, seen = _drive("merged")
    for told, cheap, complete in seen:
        if len(complete) < 3:  # fewer than MERGE_AFTER complete fits: the lowest rung
            assert told == cheap
            continue
        gap = float(np.median([complete[c] - cheap[c] for c in complete]))
        assert told == pytest.approx({c: complete.get(c, cheap[c] + gap) for c in cheap})
    assert len(seen[-1][2]) >= 4  # the check above ran past the switch
    space = reference_space(10)
    again = MultiFidelitySearcher.from_state(space, merged.state())
    assert again.model == "merged" and again.observations() == merged.observations()
    with pytest.raises(ValueError, match="model must be one of"):
        MultiFidelitySearcher(space, seed=1, model="highest")
