"""Child runs (the baseline, each trial attempt) and the guard: one preprocessor artifact per search."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from taxi_hpo.tracking._mlflow import Metric, MlflowClient, Param, RunTag
from taxi_hpo.tracking.names import (
    FAILED_TAG_PREFIX,
    PREPROCESSOR_DIR,
    PREPROCESSOR_FILE,
    PREPROCESSOR_TAG,
    TRIAL_TAG,
)
from taxi_hpo.tracking.store import TrackingContext, retrying


def log_preprocessor_once(ctx: TrackingContext, blob: bytes) -> bool:
    """Log the preprocessor as an artifact of the parent run unless it is there already.

    Idempotent, so a retried task logs nothing twice: the sha256 tag is written after the
    artifact, as the commit marker; a retry after a half-done attempt rewrites the same path.
    Returns True when this call logged it.
    """
    client = ctx.client()
    run = retrying(lambda: client.get_run(ctx.parent_run_id))
    if run.data.tags.get(PREPROCESSOR_TAG) == ctx.preprocessor_sha256 and _has_preprocessor(
        client, ctx.parent_run_id
    ):
        return False
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / PREPROCESSOR_FILE
        path.write_bytes(blob)
        retrying(lambda: client.log_artifact(ctx.parent_run_id, str(path), PREPROCESSOR_DIR))
    retrying(lambda: client.set_tag(ctx.parent_run_id, PREPROCESSOR_TAG, ctx.preprocessor_sha256))
    return True


def _has_preprocessor(client: MlflowClient, run_id: str) -> bool:
    return any(f.path.endswith(PREPROCESSOR_FILE) for f in client.list_artifacts(run_id, PREPROCESSOR_DIR))


def count_preprocessor_artifacts(tracking_uri: str, parent_run_id: str) -> int:
    """Preprocessor files across the parent run and every child run of the search."""
    client = MlflowClient(tracking_uri=tracking_uri)
    run_ids = [parent_run_id] + [r.info.run_id for r in child_runs(tracking_uri, parent_run_id)]
    total = 0
    for run_id in run_ids:
        total += sum(1 for path in _walk_artifacts(client, run_id) if path.endswith(PREPROCESSOR_FILE))
    return total


def _walk_artifacts(client: MlflowClient, run_id: str, path: str | None = None):
    for info in client.list_artifacts(run_id, path):
        if info.is_dir:
            yield from _walk_artifacts(client, run_id, info.path)
        else:
            yield info.path


def child_runs(tracking_uri: str, parent_run_id: str, status: str | None = None) -> list:
    """The child runs of the search ``parent_run_id``, every page of them; only those in ``status``
    when given (``RUNNING``, ``FINISHED``, ...)."""
    client = MlflowClient(tracking_uri=tracking_uri)
    parent = retrying(lambda: client.get_run(parent_run_id))
    query = f"tags.mlflow.parentRunId = '{parent_run_id}'"
    if status:
        query += f" and attributes.status = '{status}'"
    runs, token = [], None
    while True:
        page = retrying(
            lambda token=token: client.search_runs(
                [parent.info.experiment_id], query, max_results=1000, page_token=token
            )
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def start_child_run(ctx: TrackingContext, run_name: str, tags: dict) -> str:
    """Open a child run ``run_name`` of the parent, tagged with the parent, the preprocessor's hash,
    the context's tags and ``tags``; returns its run id."""
    client = ctx.client()
    all_tags = {
        "mlflow.parentRunId": ctx.parent_run_id,
        PREPROCESSOR_TAG: ctx.preprocessor_sha256,
        **ctx.tags,
        **tags,
    }
    run = retrying(lambda: client.create_run(ctx.experiment_id, run_name=run_name, tags=all_tags))
    return run.info.run_id


def finish_child_run(
    ctx: TrackingContext,
    run_id: str,
    params: dict,
    metrics: dict,
    artifacts: dict[str, Path] | None = None,
    status: str = "FINISHED",
    tags: dict | None = None,
) -> None:
    """Log params, metrics and tags in one batch, upload artifacts, close the run."""
    client = ctx.client()
    now = int(time.time() * 1000)
    retrying(
        lambda: client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            params=[Param(k, str(v)) for k, v in params.items()],
            tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
        )
    )
    for artifact_path, local in (artifacts or {}).items():
        retrying(lambda local=local, path=artifact_path: client.log_artifact(run_id, str(local), path))
    retrying(lambda: client.set_terminated(run_id, status))


def fail_child_run(ctx: TrackingContext, run_id: str, error: str, status: str = "FAILED") -> None:
    """Close run ``run_id`` as ``status``, with ``error`` (its first 4000 characters) as its
    ``error`` tag. Best effort: a store that keeps failing leaves the run to the sweep at the end of
    the search (:func:`close_stale_children`)."""
    client = ctx.client()
    try:
        retrying(lambda: client.set_tag(run_id, "error", error[:4000]), attempts=3)
        retrying(lambda: client.set_terminated(run_id, status), attempts=3)
    except Exception:  # noqa: BLE001 - the sweep at the end of the search closes it
        pass


def finished_trial_run(ctx: TrackingContext, trial_id: int):
    """The FINISHED child run of ``trial_id`` if an earlier attempt completed it, else None."""
    client = ctx.client()
    query = (
        f"tags.mlflow.parentRunId = '{ctx.parent_run_id}' and tags.{TRIAL_TAG} = '{trial_id}'"
        " and attributes.status = 'FINISHED'"
    )
    runs = retrying(lambda: client.search_runs([ctx.experiment_id], query, max_results=1))
    return runs[0] if runs else None


def close_stale_children(tracking_uri: str, parent_run_id: str, keep: set | frozenset = frozenset()) -> int:
    """Mark children still RUNNING (an attempt killed with its worker) KILLED; returns how many.

    ``keep``: run ids known to have ended (the trials that came back): never marked, even if a
    tracking server under load still reads them as RUNNING."""
    client = MlflowClient(tracking_uri=tracking_uri)
    stale = [
        r for r in child_runs(tracking_uri, parent_run_id, status="RUNNING") if r.info.run_id not in keep
    ]
    for run in stale:
        retrying(lambda run_id=run.info.run_id: client.set_terminated(run_id, "KILLED"))
    return len(stale)


def mark_trial_failed(ctx: TrackingContext, trial_id: int, params: dict, error: str) -> None:
    """Remember on the parent that a trial failed for good (its retries spent), with its point."""
    value = json.dumps({"error": (error or "failed")[:300], "params": params})
    retrying(lambda: ctx.client().set_tag(ctx.parent_run_id, f"{FAILED_TAG_PREFIX}{trial_id}", value))
