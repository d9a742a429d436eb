"""One trial on a worker: fit XGBoost, log its child run, return its outcome as plain data.

No Prefect, no Dask: the trial task (:func:`taxi_hpo.flows.tasks.trial`) is a thin wrapper around
:func:`run_trial`, and the bench's sequential layout calls it directly.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from taxi_hpo import tracking
from taxi_hpo.core import features, models
from taxi_hpo.core.features import PreparedData
from taxi_hpo.core.machine import core_pool
from taxi_hpo.search.space import xgb_params

BOOSTER_DIR, BOOSTER_FILE = tracking.BOOSTER_DIR, tracking.BOOSTER_FILE

_SAMPLES: dict[tuple, PreparedData] = {}  # (data key, rows, seed) -> the row sample, per process
_SAMPLES_LOCK = threading.Lock()


def at_fidelity(data: PreparedData, rounds: int, fidelity: dict | None) -> tuple[PreparedData, int]:
    """The data and rounds a trial fits at ``fidelity`` (a multi-fidelity search's rung): a row
    sample of the training month (built once per process, the same for every trial of the rung)
    and the rung's cap on the rounds; without one, everything."""
    if not fidelity:
        return data, rounds
    capped = min(rounds, fidelity["rounds"]) if fidelity.get("rounds") else rounds
    if fidelity["rows"] >= 1.0:
        return data, capped
    key = (data.key, fidelity["rows"], fidelity["seed"])
    with _SAMPLES_LOCK:
        sample = _SAMPLES.get(key)
        if sample is None:
            sample = _SAMPLES[key] = features.row_sample(data, fidelity["rows"], fidelity["seed"])
    return sample, capped


def fidelity_tags(fidelity: dict | None) -> dict:
    """The MLflow tags of a trial fitted at ``fidelity`` (none for a search without a ladder)."""
    if not fidelity:
        return {}
    tags = {tracking.FIDELITY_TAG: json.dumps(fidelity), tracking.RUNG_TAG: str(fidelity["rung"])}
    if fidelity.get("promoted_from") is not None:
        tags[tracking.PROMOTED_FROM_TAG] = str(fidelity["promoted_from"])
    return tags


def slot_name() -> str:
    """Which slot ran a trial: host, process and thread (a Gantt row in the benchmark)."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident() % 10000}"


def warm_up(data: PreparedData, ctx: tracking.TrackingContext) -> dict:
    """Run on each worker before the search: the matrices and the tracking store, ready.

    Measured on 2 cores: the first trial of a cold worker spent ~1 s more than the others
    opening the store (engine, schema check) besides building its matrices.

    Returns what the flow needs to place trials: the worker's core pool and its cores
    (:func:`taxi_hpo.core.machine.core_pool`), and how many matrix pairs this process has built.
    """
    models.matrices(data)
    tracking.warm(ctx)
    pool, cores = core_pool()
    return {"pool": pool, "cores": cores, "matrix_builds": models.matrix_builds()}


def run_trial(
    trial_id: int,
    params: dict,
    data: PreparedData,
    ctx: tracking.TrackingContext,
    rounds: int,
    nthread: int,
    threads: models.ThreadSource | None = None,
    start_threads: int | None = None,
    prune_at: dict | None = None,
    stop: Callable[[], bool] | None = None,
    run_tags: dict | None = None,
    fidelity: dict | None = None,
) -> dict:
    """Fit, log and score trial ``trial_id``; raises on failure (the task's retry policy decides).

    ``nthread`` is the trial's base thread count (logged as its ``nthread`` parameter); with
    ``threads`` (elastic threads) XGBoost starts on ``start_threads`` and follows that source.
    ``prune_at`` (``{checkpoint round: highest validation RMSE}``): a trial above a threshold stops
    there, a FINISHED run tagged ``pruned_at_round``, its loss the RMSE it had reached.
    ``stop`` (the time budget): asked between rounds; a stopped trial's run ends KILLED and its
    outcome is ``cancelled`` (no loss), so a resumed search runs it again.
    ``fidelity`` (a multi-fidelity search's rung, :func:`at_fidelity`): fit that share of the
    training rows for at most that many rounds; the run is tagged with it (:func:`fidelity_tags`).
    Idempotent: when an earlier attempt of the same trial already FINISHED its run (a worker
    died after logging but before returning, or a retired worker finished its attempt while
    Dask ran the trial elsewhere too), that run's result is returned and this attempt's run ends
    KILLED, not a second FINISHED run.
    """
    started = time.time()
    earlier = tracking.finished_trial_run(ctx, trial_id)
    if earlier is not None:
        return _outcome_from_run(trial_id, params, earlier, started)
    data, rounds = at_fidelity(data, rounds, fidelity)
    run_id = tracking.start_child_run(
        ctx,
        f"trial-{trial_id:04d}",
        {
            **(run_tags or {}),
            **fidelity_tags(fidelity),
            tracking.TRIAL_TAG: str(trial_id),
            "worker": slot_name(),
        },
    )
    try:
        try:
            fit = models.fit_xgboost(
                xgb_params(params, nthread),
                data,
                rounds,
                threads=threads,
                start_threads=start_threads,
                prune_at=prune_at,
                stop=stop,
            )
        except models.TrialStopped as stopped:
            tracking.fail_child_run(ctx, run_id, str(stopped), status="KILLED")
            return {
                "trial_id": trial_id,
                "params": params,
                "loss": None,
                "started": started,
                "finished": time.time(),
                "worker": slot_name(),
                "run_id": run_id,
                "error": str(stopped),
                "cancelled": True,
                "fidelity": fidelity or {},
            }
        metrics = {
            "rmse_train": fit.rmse_train,
            "rmse_valid": fit.rmse_valid,
            "inference_time": fit.inference_time,
            "best_iteration": fit.best_iteration,
            "fit_s": fit.fit_s,
            "train_s": fit.train_s,
            "train_cpu_s": fit.train_cpu_s,
            "threads_mean": fit.threads_mean,
            "thread_changes": len(fit.thread_changes),
        }
        with tempfile.TemporaryDirectory() as tmp:
            booster_path = Path(tmp) / BOOSTER_FILE
            fit.booster.save_model(booster_path)
            metrics["trial_wall_s"] = time.time() - started
            tags = {tracking.CURVE_TAG: json.dumps(fit.curve)} if prune_at else {}
            if fit.pruned_at is not None:
                tags[tracking.PRUNED_TAG] = fit.pruned_at
            # Two attempts can run at once: a worker retired mid-trial finishes its attempt while
            # Dask has already started the trial elsewhere. The first to finish keeps its run.
            other = tracking.finished_trial_run(ctx, trial_id)
            if other is not None:
                tracking.fail_child_run(
                    ctx,
                    run_id,
                    f"another attempt at trial {trial_id} finished first (run {other.info.run_id})",
                    status="KILLED",
                )
                return _outcome_from_run(trial_id, params, other, started)
            tracking.finish_child_run(
                ctx,
                run_id,
                {**params, "nthread": nthread, "rounds": rounds},
                metrics,
                {BOOSTER_DIR: booster_path},
                tags=tags,
            )
    except BaseException as exc:
        tracking.fail_child_run(ctx, run_id, f"{type(exc).__name__}: {exc}")
        raise
    return {
        "trial_id": trial_id,
        "params": params,
        "loss": fit.rmse_valid,
        "started": started,
        "finished": time.time(),
        "fit_s": fit.fit_s,
        "worker": slot_name(),
        "run_id": run_id,
        "metrics": {**metrics, "worker_matrix_builds": models.matrix_builds()},
        "curve": fit.curve,
        "pruned_at": fit.pruned_at,
        "fidelity": fidelity or {},
    }


def _outcome_from_run(trial_id, params, run, started) -> dict:
    metrics = dict(run.data.metrics)
    pruned = run.data.tags.get(tracking.PRUNED_TAG)
    return {
        "trial_id": trial_id,
        "params": params,
        "loss": metrics.get("rmse_valid"),
        "started": started,
        "finished": time.time(),
        "fit_s": 0.0,
        "worker": slot_name(),
        "run_id": run.info.run_id,
        "metrics": metrics,
        "curve": {int(r): v for r, v in json.loads(run.data.tags.get(tracking.CURVE_TAG, "{}")).items()},
        "pruned_at": int(pruned) if pruned is not None else None,
        "fidelity": json.loads(run.data.tags.get(tracking.FIDELITY_TAG, "{}")),
    }
