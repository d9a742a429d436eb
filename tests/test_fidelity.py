"""Lower fidelities, the pure part: a row sample kept to its own columns fits the trees all
columns would, and the promotion ladder (ASHA's promote rule) on synthetic results."""

from __future__ import annotations

import math

import numpy as np
import pytest

from taxi_hpo.core import features, models
from taxi_hpo.search.promotion import AUTO, COMPLETE, Promoter, Rung

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


def test_the_model_learns_from_the_highest_rung_with_enough_results():
    promoter = Promoter(AUTO)
    assert promoter.model_rung(min_points=3) == 0
    for config in range(6):
        promoter.record(config, 0, 7.0 + config)
    promoter.record(0, 1, 6.0)
    promoter.record(1, 1, None)
    assert promoter.model_rung(min_points=2) == 0  # one finite complete result
    promoter.record(2, 1, 6.5)
    assert promoter.model_rung(min_points=2) == 1


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
