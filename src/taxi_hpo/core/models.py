"""Train and score the LinearRegression baseline and one XGBoost trial; the bundled predictor.

Pure: no Prefect, Dask or MLflow. The per-process matrix cache lets a worker build its XGBoost
matrices once per dataset and reuse them for every trial it runs.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.linear_model import LinearRegression

from taxi_hpo.core.features import PreparedData, Preprocessor
from taxi_hpo.search.pruning import should_stop

EARLY_STOPPING_ROUNDS = 5


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Root mean squared error of ``y_pred`` against ``y_true``."""
    return float(np.sqrt(np.mean((np.asarray(y_true) - np.asarray(y_pred)) ** 2)))


def linear_baseline_version() -> str:
    """What the baseline's result depends on besides the data: the library that fits it."""
    import sklearn

    return f"sklearn-{sklearn.__version__}"


def linear_baseline(data: PreparedData) -> float:
    """Validation RMSE of a plain LinearRegression (the reference: 7.7587 on 2021-01/02)."""
    model = LinearRegression()
    model.fit(data.X_train, data.y_train)
    return rmse(data.y_valid, model.predict(data.X_valid))


# -- XGBoost matrices, built once per worker thread and dataset --------------------------------

_MATRIX_LOCK = threading.Lock()
_MATRICES: dict[tuple[str, int], tuple[xgb.DMatrix, xgb.DMatrix]] = {}
_MATRIX_BUILDS = 0


def matrices(data: PreparedData) -> tuple[xgb.DMatrix, xgb.DMatrix]:
    """(train, valid) ``DMatrix`` pair for ``data``, cached per process and thread.

    Plain ``DMatrix``, not ``QuantileDMatrix``: on these 13,221 sparse one-hot columns a
    QuantileDMatrix made a 15-round, depth-20 trial take 72 s instead of 5.6 s (2 cores).
    One pair per thread, because XGBoost builds its histogram index lazily inside a
    DMatrix and concurrent ``train`` calls on one DMatrix are not documented as safe.
    """
    global _MATRIX_BUILDS
    slot = (data.key, threading.get_ident())
    with _MATRIX_LOCK:
        cached = _MATRICES.get(slot)
    if cached is None:
        dtrain = xgb.DMatrix(data.X_train, label=data.y_train)
        dvalid = xgb.DMatrix(data.X_valid, label=data.y_valid)
        cached = (dtrain, dvalid)
        with _MATRIX_LOCK:
            _MATRICES[slot] = cached
            _MATRIX_BUILDS += 1
    return cached


#: Validation rows whose prediction is timed for ``inference_time`` (the first ones of the month).
INFERENCE_SAMPLE_ROWS = 5000
_SAMPLES: dict[tuple[str, int], xgb.DMatrix] = {}


def inference_sample(data: PreparedData) -> xgb.DMatrix:
    """The first :data:`INFERENCE_SAMPLE_ROWS` validation rows as their own ``DMatrix`` (cached
    like :func:`matrices`): a matrix no booster has a prediction cache for, so predicting it
    times a real pass over the trees."""
    slot = (data.key, threading.get_ident())
    sample = _SAMPLES.get(slot)
    if sample is None:
        rows = min(INFERENCE_SAMPLE_ROWS, data.X_valid.shape[0])
        sample = _SAMPLES[slot] = xgb.DMatrix(data.X_valid[:rows])
    return sample


def matrix_builds() -> int:
    """How many matrix pairs this process has built (one per dataset and thread when shared)."""
    return _MATRIX_BUILDS


#: Asked between boosting rounds: the threads the trial should use now, or None for "no change".
ThreadSource = Callable[[], "int | None"]


class _FinalPredictions(xgb.callback.TrainingCallback):
    """Reads both months' predictions at the end of training, from XGBoost's prediction cache.

    While it trains, XGBoost keeps each evaluated matrix's predictions up to date round by round;
    ``xgb.train`` then returns a *copy* of the booster, without that cache, so a later
    ``predict`` walks every tree again (measured: 7 % of a reference-size search's trial time at
    depth 60-90). Read here, the same predictions (tested identical) cost nothing.
    """

    def __init__(self, dtrain: xgb.DMatrix, dvalid: xgb.DMatrix):
        self.dtrain, self.dvalid = dtrain, dvalid
        self.train = self.valid = None

    def after_training(self, model):
        self.valid = model.predict(self.dvalid)
        self.train = model.predict(self.dtrain)
        return model


class TrialStopped(Exception):
    """A trial was asked to stop (the search's time budget ran out) and did, between two rounds."""


class _StopWhenAsked(xgb.callback.TrainingCallback):
    def __init__(self, asked: Callable[[], bool]):
        self.asked = asked

    def after_iteration(self, model, epoch: int, evals_log) -> bool:
        if self.asked():
            raise TrialStopped(f"stopped after round {epoch + 1}: the search's time budget ran out")
        return False


class _Checkpoints(xgb.callback.TrainingCallback):
    """Records the validation RMSE at the checkpoint rounds and stops (prunes) the trial at the
    first one where it is above the threshold it was given (:mod:`taxi_hpo.search.pruning`)."""

    def __init__(self, thresholds: Mapping[int, float]):
        self.thresholds = dict(thresholds)
        self.curve: dict[int, float] = {}
        self.pruned_at: int | None = None

    def after_iteration(self, model, epoch: int, evals_log) -> bool:
        round_ = epoch + 1
        if round_ not in self.thresholds:
            return False
        rmse_now = float(evals_log["validation"]["rmse"][-1])
        self.curve[round_] = rmse_now
        if should_stop(round_, rmse_now, self.thresholds):
            self.pruned_at = round_
            return True
        return False


class ElasticThreads(xgb.callback.TrainingCallback):
    """Applies the thread count of a :data:`ThreadSource` between boosting rounds.

    ``Booster.set_param("nthread", k)`` takes effect from the next round, without restarting
    the trial; the trees do not depend on it (a trial's RMSE is the same whatever its schedule).
    ``schedule`` keeps ``(round, threads, perf_counter seconds)`` for every change.
    """

    def __init__(self, source: ThreadSource, start: int, limit: int):
        self.source, self.current, self.limit = source, start, max(1, limit)
        self.schedule: list[tuple[int, int, float]] = [(0, start, time.perf_counter())]

    def after_iteration(self, model, epoch: int, evals_log) -> bool:
        """Between rounds: apply the source's count, clamped to 1 .. ``limit``, when it differs from
        the current one; never stops training."""
        wanted = self.source()
        if wanted is not None:
            wanted = max(1, min(int(wanted), self.limit))
            if wanted != self.current:
                model.set_param("nthread", wanted)
                self.current = wanted
                self.schedule.append((epoch + 1, wanted, time.perf_counter()))
        return False  # never stops training

    def thread_seconds(self, end: float) -> float:
        """Threads x seconds from the start of training to ``end`` (a perf_counter value)."""
        marks = self.schedule + [(0, 0, end)]
        return sum(threads * (marks[i + 1][2] - t) for i, (_, threads, t) in enumerate(self.schedule))


@dataclass
class TrialFit:
    """What one XGBoost trial produced."""

    booster: xgb.Booster
    rmse_train: float
    rmse_valid: float
    best_iteration: int
    fit_s: float
    inference_time: float  # seconds per row, the first validation rows predicted on the base threads
    train_s: float = 0.0  # xgb.train alone
    train_cpu_s: float = 0.0  # CPU seconds of this process meanwhile (all its threads)
    threads_mean: float = 0.0  # time-weighted threads over xgb.train
    thread_changes: list = field(default_factory=list)  # [(round, threads)] after the start
    curve: dict = field(default_factory=dict)  # {checkpoint round: validation RMSE there}
    pruned_at: int | None = None  # the checkpoint round it was stopped at, if pruned


def fit_xgboost(
    params: dict,
    data: PreparedData,
    rounds: int,
    early_stopping_rounds: int = EARLY_STOPPING_ROUNDS,
    threads: ThreadSource | None = None,
    start_threads: int | None = None,
    max_threads: int | None = None,
    prune_at: Mapping[int, float] | None = None,
    stop: Callable[[], bool] | None = None,
) -> TrialFit:
    """Train with early stopping on the validation month and score both months.

    ``params["nthread"]`` is the trial's base thread count. With ``threads``, training starts on
    ``start_threads`` (or what the source says already) and follows the source between rounds,
    up to ``max_threads`` (default: the cores the process may use). This thread's OpenMP limit
    is set to match for the fit: a Dask nanny's ``OMP_NUM_THREADS=1`` would otherwise cap
    XGBoost at one thread whatever it is asked for. ``inference_time`` times a prediction of the
    first validation rows (:func:`inference_sample`) on the base count; both RMSEs come from the
    predictions XGBoost kept while training (:class:`_FinalPredictions`), the same values
    ``booster.predict`` returns. ``prune_at``: ``{checkpoint round: highest validation RMSE
    allowed}``; the trial records its RMSE at each and stops at the first it is above (pruned).
    ``stop``: asked between rounds; when it says so, :class:`TrialStopped` is raised.
    """
    dtrain, dvalid = matrices(data)
    base = int(params.get("nthread", 1))
    callbacks, elastic = [], None
    if threads is not None:
        from taxi_hpo.core.machine import usable_cores

        start = threads() or start_threads or base
        elastic = ElasticThreads(threads, start, max_threads or usable_cores())
        params = {**params, "nthread": elastic.current}
        callbacks.append(elastic)
    t0, cpu0 = time.perf_counter(), time.process_time()
    if elastic is not None:
        elastic.schedule[0] = (0, elastic.current, t0)
    final = _FinalPredictions(dtrain, dvalid)
    if prune_at:
        checkpoints = _Checkpoints(prune_at)
        callbacks.append(checkpoints)
    if stop is not None:
        callbacks.append(_StopWhenAsked(stop))
    with _openmp_limit(elastic.limit if elastic else base):
        # Both months are evaluated as the rounds go (the training month from the training
        # loop's own cache); early stopping watches the last one, validation.
        booster = xgb.train(
            params,
            dtrain=dtrain,
            num_boost_round=rounds,
            evals=[(dtrain, "train"), (dvalid, "validation")],
            early_stopping_rounds=early_stopping_rounds,
            verbose_eval=False,
            callbacks=[*callbacks, final],
        )
        t1, train_cpu_s = time.perf_counter(), time.process_time() - cpu0
        if elastic is not None and elastic.current != base:
            booster.set_param("nthread", base)
        sample = inference_sample(data)
        t2 = time.perf_counter()
        booster.predict(sample)
        inference_s = time.perf_counter() - t2
    fit_s = time.perf_counter() - t0
    valid_rmse = rmse(data.y_valid, final.valid)
    if not math.isfinite(valid_rmse):
        raise FloatingPointError(f"validation RMSE is {valid_rmse}: the parameters diverged")
    train_s = t1 - t0
    return TrialFit(
        booster=booster,
        rmse_train=rmse(data.y_train, final.train),
        rmse_valid=valid_rmse,
        best_iteration=int(getattr(booster, "best_iteration", rounds - 1)),
        fit_s=fit_s,
        inference_time=inference_s / max(sample.num_row(), 1),
        train_s=train_s,
        train_cpu_s=train_cpu_s,
        threads_mean=(elastic.thread_seconds(t1) / train_s if elastic and train_s > 0 else float(base)),
        thread_changes=[(r, k) for r, k, _ in elastic.schedule[1:]] if elastic else [],
        curve=checkpoints.curve if prune_at else {},
        pruned_at=checkpoints.pruned_at if prune_at else None,
    )


class _openmp_limit:
    """Set this thread's OpenMP thread limit to ``threads`` for the block (None: unchanged)."""

    def __init__(self, threads: int | None):
        self.threads, self._limits = threads, None

    def __enter__(self):
        if self.threads is not None:
            from threadpoolctl import threadpool_limits

            self._limits = threadpool_limits(limits=self.threads, user_api="openmp")
        return self

    def __exit__(self, *exc):
        if self._limits is not None:
            self._limits.restore_original_limits()
        return False


class DurationPredictor:
    """Raw TLC rows in, minutes out: the preprocessor and the booster, bundled."""

    def __init__(self, preprocessor: Preprocessor, booster: xgb.Booster):
        self.preprocessor = preprocessor
        self.booster = booster

    def predict(self, raw: pd.DataFrame) -> np.ndarray:
        """Predicted trip durations in minutes, one per row of ``raw`` (raw TLC columns)."""
        features = self.preprocessor.transform_raw(raw)
        return self.booster.predict(xgb.DMatrix(features))
