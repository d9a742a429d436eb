"""Features and models on the real months: the reference figures."""

from __future__ import annotations

import dataclasses
import math
import uuid

import numpy as np
import pandas as pd
import pytest

from taxi_hpo.core import data, features, models
from taxi_hpo.search import reference_space, xgb_params


@pytest.mark.integration  # on the real months
def test_preprocessor_fitted_on_train_only(prepared, data_dir):
    assert prepared.preprocessor.n_features == 13221
    assert prepared.X_train.shape == (73908, 13221) and prepared.X_valid.shape == (61921, 13221)
    valid = data.load(data_dir / "green_tripdata_2021-02.parquet")
    valid_pairs = set(valid["PULocationID"] + "_" + valid["DOLocationID"])
    vocab = prepared.preprocessor.vectorizer.vocabulary_
    unseen = [p for p in valid_pairs if f"PU_DO={p}" not in vocab]
    assert unseen, "the validation month has pairs the training month lacks"


@pytest.mark.integration  # on the real months
def test_preprocessor_hash_is_content_based(prepared, data_dir):
    again = features.Preprocessor.fit(data.load(data_dir / "green_tripdata_2021-01.parquet"))
    assert features.preprocessor_sha256(again) == features.preprocessor_sha256(prepared.preprocessor)
    other = features.Preprocessor.fit(data.load(data_dir / "green_tripdata_2023-01.parquet"))
    assert features.preprocessor_sha256(other) != features.preprocessor_sha256(prepared.preprocessor)


@pytest.mark.integration  # on the real months
def test_linear_baseline_matches_reference(prepared):
    assert models.linear_baseline(prepared) == pytest.approx(7.7587, abs=5e-5)


@pytest.mark.integration  # on the real months
def test_xgboost_trial_and_matrix_cache(prepared):
    # data no earlier test can have built matrices for (the session shares `prepared`)
    prepared = dataclasses.replace(prepared, train_sha256=f"{prepared.train_sha256}-{uuid.uuid4().hex}")
    before = models.matrix_builds()
    params = xgb_params(
        {
            "max_depth": 6,
            "learning_rate": 0.3,
            "reg_alpha": 0.02,
            "reg_lambda": 0.01,
            "min_child_weight": 1.0,
            "objective": "reg:squarederror",
            "seed": 42,
        },
        nthread=1,
    )
    first = models.fit_xgboost(params, prepared, rounds=5)
    second = models.fit_xgboost(params, prepared, rounds=5)
    assert models.matrix_builds() == before + 1  # built once, reused
    assert first.rmse_valid == second.rmse_valid  # deterministic
    assert 5 < first.rmse_valid < 12 and first.rmse_train > 0 and 0 < first.inference_time < 1e-3
    assert first.best_iteration <= 4


@pytest.mark.integration  # on the real months
def test_xgboost_trial_fits_what_the_reference_fits(prepared):
    # The reference: xgb.train watching the validation month only, then predict() on each month.
    import xgboost as xgb

    params = xgb_params(
        {
            "max_depth": 12,
            "learning_rate": 0.95,
            "reg_alpha": 0.02,
            "reg_lambda": 0.01,
            "min_child_weight": 1.0,
            "objective": "reg:squarederror",
            "seed": 42,
        },
        nthread=1,
    )
    dtrain, dvalid = models.matrices(prepared)
    reference = xgb.train(
        params, dtrain, 100, evals=[(dvalid, "validation")], early_stopping_rounds=5, verbose_eval=False
    )
    fit = models.fit_xgboost(params, prepared, rounds=100)
    assert fit.booster.num_boosted_rounds() < 100  # early stopping happened: the case that matters
    assert fit.booster.get_dump() == reference.get_dump()
    assert fit.rmse_valid == models.rmse(prepared.y_valid, reference.predict(dvalid))
    # Both RMSEs come from the predictions XGBoost kept while training, not a second pass over
    # the trees: the very same figures.
    assert fit.rmse_train == models.rmse(prepared.y_train, reference.predict(dtrain))
    # inference_time: a real pass over the trees, on the first validation rows
    assert models.inference_sample(prepared).num_row() == models.INFERENCE_SAMPLE_ROWS
    assert 0 < fit.inference_time < 1e-3


@pytest.mark.integration  # on the real months
def test_a_trial_stops_at_the_first_checkpoint_it_fails(prepared):
    params = xgb_params(
        {
            "max_depth": 8,
            "learning_rate": 0.05,
            "reg_alpha": 0.02,
            "reg_lambda": 0.01,
            "min_child_weight": 1.0,
            "objective": "reg:squarederror",
            "seed": 42,
        },
        nthread=1,
    )
    free = models.fit_xgboost(params, prepared, rounds=12, prune_at={3: math.inf, 9: math.inf})
    assert free.pruned_at is None and sorted(free.curve) == [3, 9] and free.booster.num_boosted_rounds() == 12
    assert free.curve[3] > free.curve[9]  # a slow learner, still improving
    stopped = models.fit_xgboost(params, prepared, rounds=12, prune_at={3: math.inf, 9: free.curve[9] - 1e-3})
    assert stopped.pruned_at == 9 and stopped.booster.num_boosted_rounds() == 9
    assert stopped.curve == free.curve
    # its loss is the RMSE it had reached there
    assert stopped.rmse_valid == pytest.approx(free.curve[9], rel=1e-6)
    assert models.fit_xgboost(params, prepared, rounds=12).curve == {}  # no pruning: no checkpoints


@pytest.mark.integration  # on the real months
def test_xgboost_rejects_bad_params(prepared):
    import xgboost

    with pytest.raises(xgboost.core.XGBoostError, match=r"value -3 for Parameter max_depth"):
        models.fit_xgboost({"max_depth": -3, "objective": "reg:squarederror", "nthread": 1}, prepared, 2)


@pytest.mark.integration  # on the real months
def test_predictor_on_raw_rows(prepared, data_dir):
    params = xgb_params(
        {
            "max_depth": 4,
            "learning_rate": 0.5,
            "reg_alpha": 0.02,
            "reg_lambda": 0.01,
            "min_child_weight": 1.0,
            "objective": "reg:squarederror",
            "seed": 42,
        },
        nthread=1,
    )
    fit = models.fit_xgboost(params, prepared, rounds=3)
    raw = pd.read_parquet(data_dir / "green_tripdata_2023-03.parquet").head(100)  # int ids, unfiltered
    pred = models.DurationPredictor(prepared.preprocessor, fit.booster).predict(raw)
    assert pred.shape == (100,) and np.isfinite(pred).all()


def test_space_bounds():
    space = reference_space(10)
    assert set(space) >= {"max_depth", "learning_rate", "reg_alpha", "reg_lambda", "min_child_weight"}
    from taxi_hpo.errors import ConfigError

    with pytest.raises(ConfigError, match="lower bound 4"):
        reference_space(3)


@pytest.mark.integration  # on the real months
def test_two_datasets_in_one_process_never_share_cached_matrices(data_dir):
    """Found by the warm-start study: two months prepared in one process without file hashes
    got one key, so the second search trained on the first one's cached matrices."""
    from taxi_hpo.core import data as data_mod
    from taxi_hpo.core import features

    months = [data_mod.load(data_dir / f"green_tripdata_2023-0{m}.parquet") for m in (1, 2, 3)]
    first = features.prepare_data(months[0], months[1])
    second = features.prepare_data(months[1], months[2])
    assert first.key != second.key
    assert features.prepare_data(months[0], months[1]).key == first.key  # content, not identity
    dtrain, dvalid = models.matrices(second)
    assert (dtrain.num_row(), dvalid.num_row()) == (len(months[1]), len(months[2]))
