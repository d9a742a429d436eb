"""A search as the store remembers it: for ``--resume``, ``--warm-start`` and the report."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from taxi_hpo.errors import TrackingError
from taxi_hpo.tracking._mlflow import MlflowClient, MlflowException
from taxi_hpo.tracking.names import CURVE_TAG, FAILED_TAG_PREFIX, FIDELITY_TAG, PRUNED_TAG, TRIAL_TAG
from taxi_hpo.tracking.runs import child_runs
from taxi_hpo.tracking.store import retrying


@dataclass
class SearchRecord:
    """A search as the tracking store remembers it."""

    run_id: str
    experiment_id: str
    status: str
    params: dict
    trials: dict  # trial id -> {"params": {...str}, "loss", "run_id", "metrics"}
    failed: dict  # trial id -> {"error", "params"}, for trials that failed for good
    lr_rmse: float | None
    tags: dict = field(default_factory=dict)


def load_search(tracking_uri: str, run_id: str) -> SearchRecord:
    """Read a parent run and its finished trials; TrackingError when there is no such search."""
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        parent = client.get_run(run_id)
    except MlflowException as exc:
        raise TrackingError(
            f"no search run {run_id} in {tracking_uri}: pass the parent_run_id a search printed "
            f"(--json) and the same --tracking-uri"
        ) from exc
    if parent.data.tags.get("taxi_hpo.role") != "search":
        raise TrackingError(
            f"run {run_id} is not a taxi-hpo search (no taxi_hpo.role=search tag): pass its parent run id"
        )
    trials, lr_rmse = {}, None
    for run in child_runs(tracking_uri, run_id, status="FINISHED"):
        tag = run.data.tags.get(TRIAL_TAG)
        if tag is None:
            if run.data.tags.get("model") == "LinearRegression":
                lr_rmse = run.data.metrics.get("rmse_valid")
            continue
        trials[int(tag)] = {
            "params": dict(run.data.params),
            "loss": run.data.metrics.get("rmse_valid"),
            "run_id": run.info.run_id,
            "metrics": dict(run.data.metrics),
            "curve": {int(r): v for r, v in json.loads(run.data.tags.get(CURVE_TAG, "{}")).items()},
            "pruned_at": int(run.data.tags[PRUNED_TAG]) if PRUNED_TAG in run.data.tags else None,
            "fidelity": json.loads(run.data.tags.get(FIDELITY_TAG, "{}")),
        }
    failed = {
        int(k[len(FAILED_TAG_PREFIX) :]): json.loads(v)
        for k, v in parent.data.tags.items()
        if k.startswith(FAILED_TAG_PREFIX) and int(k[len(FAILED_TAG_PREFIX) :]) not in trials
    }
    return SearchRecord(
        run_id,
        parent.info.experiment_id,
        parent.info.status,
        dict(parent.data.params),
        trials,
        failed,
        lr_rmse,
        dict(parent.data.tags),
    )


def latest_search(tracking_uri: str, experiment_id: str) -> str | None:
    """The most recent search of the experiment with at least one finished trial, or None."""
    client = MlflowClient(tracking_uri=tracking_uri)
    runs = retrying(
        lambda: client.search_runs(
            [experiment_id],
            "tags.`taxi_hpo.role` = 'search'",
            order_by=["attributes.start_time DESC"],
            max_results=50,
        )
    )
    for run in runs:
        if any(
            TRIAL_TAG in child.data.tags
            for child in child_runs(tracking_uri, run.info.run_id, status="FINISHED")
        ):
            return run.info.run_id
    return None


def is_complete(trial: dict) -> bool:
    """Whether a trial of :func:`load_search` is a complete fit with a loss: not pruned, not a
    lower rung of a multi-fidelity search."""
    return (
        trial["loss"] is not None
        and trial.get("pruned_at") is None
        and trial.get("fidelity", {}).get("complete", True)
    )


def best_points(tracking_uri: str, search_run_id: str, k: int) -> list[dict]:
    """The ``k`` best complete trials (not pruned, not a lower rung) of a search:
    ``[{"from", "params", "rmse"}]``, params as MLflow stored them (strings)."""
    record = load_search(tracking_uri, search_run_id)
    complete = sorted((t["loss"], tid) for tid, t in record.trials.items() if is_complete(t))
    return [
        {"from": f"{search_run_id}:{tid}", "params": record.trials[tid]["params"], "rmse": loss}
        for loss, tid in complete[:k]
    ]
