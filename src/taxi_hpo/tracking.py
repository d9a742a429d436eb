"""Everything MLflow: the store, the parent run, child runs, the preprocessor guard, the registry.

The only module that imports mlflow. Workers get a :class:`TrackingContext` (plain data) and
talk to the store through an explicit ``MlflowClient``: the fluent API's active run, tracking
URI and experiment are per process and would not follow a trial to a Dask worker.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import socket
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

with warnings.catch_warnings():
    # mlflow warns at import time about features we do not use: noise for users.
    warnings.simplefilter("ignore")
    import mlflow
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

from taxi_hpo.errors import DISK_ERRNOS, TrackingError

# mlflow configures its loggers at import (INFO): schema-migration chatter is noise for users.
logging.getLogger("mlflow").setLevel(os.environ.get("MLFLOW_LOGGING_LEVEL", "WARNING").upper())
logging.getLogger("alembic").setLevel(logging.WARNING)
# Registration downloads two small artifacts; three tqdm bars for them are noise on the terminal.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# Fail fast on an unreachable server instead of MLflow's default minutes of HTTP retries;
# our own retry (below) decides how long a trial waits for the store.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
# MLflow's usage telemetry sets and unsets a variable in os.environ from its own thread; another
# thread reading the environment then failed one trial's log_batch with a KeyError (seen once in
# 1,000 runs, docs/scaling.md). A search has no use for it: off unless the user turns it on.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

MODEL_NAME = "nyc-taxi-duration"
ALIAS = "staging"
PREPROCESSOR_TAG = "preprocessor_sha256"
PREPROCESSOR_DIR = "preprocessor"
PREPROCESSOR_FILE = "preprocessor.pkl"
TRIAL_TAG = "trial_id"
# MLflow 3's UI opens an experiment without this tag on its GenAI overview (traces, "No data
# available"); with it, on the runs table of model training.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
PRUNED_TAG = "pruned_at_round"   # set on a pruned trial's run: the checkpoint round it stopped at
CURVE_TAG = "checkpoint_rmse"    # JSON {round: validation RMSE} at the checkpoints a trial reached
T = TypeVar("T")


@dataclass(frozen=True)
class TrackingContext:
    """What a worker needs to log a trial: where, under which experiment and parent."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    preprocessor_sha256: str = ""
    tags: dict = field(default_factory=dict)

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri)


def is_local_uri(uri: str) -> bool:
    """True for stores only this machine can open (a sqlite file, a folder)."""
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def retrying(fn: Callable[[], T], *, attempts: int = 8, first_wait: float = 0.5,
             max_wait: float = 8.0, what: str = "MLflow call") -> T:
    """Call ``fn`` again with exponential backoff while the store is busy or unreachable."""
    wait = first_wait
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            if attempt == attempts or not _transient(exc):
                raise
            time.sleep(wait)
            wait = min(wait * 2, max_wait)
    raise AssertionError("unreachable")


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:  # waiting does not free a disk
        return False
    text = str(exc).lower()
    markers = ("database is locked", "connection", "timed out", "timeout", "temporarily",
               "503", "502", "504", "max retries", "refused", "reset by peer")
    return isinstance(exc, (ConnectionError, TimeoutError, OSError)) or any(m in text for m in markers)


# -- the store ---------------------------------------------------------------------------------

def check_reachable(tracking_uri: str, timeout: float = 5.0) -> None:
    """Fail with one line when an HTTP tracking server does not answer ``/health``."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    url = tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            if resp.status != 200:
                raise TrackingError(f"tracking server {tracking_uri} answered {resp.status} on /health")
    except (urllib.error.URLError, socket.timeout, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(
            f"tracking server {tracking_uri} is unreachable ({reason}): start it or fix --tracking-uri"
        ) from exc


def ui_link(tracking_uri: str, experiment_id: str, run_id: str | None = None) -> str | None:
    """The MLflow UI's page of the experiment's runs table (or of one run), for a tracking
    server; None for a local store (``mlflow ui --backend-store-uri`` shows it). MLflow 3.17's
    UI opens an experiment on its GenAI overview unless the page says ``workflowType``."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    base = f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}"
    return f"{base}/runs/{run_id}?workflowType=machine_learning" if run_id else \
        f"{base}/runs?workflowType=machine_learning"


def prepare_store(tracking_uri: str, experiment: str, artifact_root: Path | None = None) -> str:
    """Create (or open) the store and the experiment from this process; returns its id.

    Called by the flow process before any worker writes: several processes creating one
    sqlite store at once race in its schema migration.
    """
    check_reachable(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                client.restore_experiment(found.experiment_id)
            if found.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return found.experiment_id
        location = None
        if artifact_root is not None and is_local_uri(tracking_uri):
            location = (Path(artifact_root).resolve() / experiment).as_uri()
        return client.create_experiment(experiment, artifact_location=location,
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except MlflowException as exc:
        raise TrackingError(f"tracking store {tracking_uri} cannot be used ({exc.message}): fix --tracking-uri") from exc
    except Exception as exc:  # sqlalchemy / OS errors surface raw
        raise TrackingError(f"tracking store {tracking_uri} cannot be used ({exc}): fix --tracking-uri") from exc


def start_parent_run(tracking_uri: str, experiment_id: str, params: dict, tags: dict,
                     run_name: str = "search") -> str:
    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.create_run(experiment_id, run_name=run_name, tags={**tags, "taxi_hpo.role": "search"})
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run.info.run_id


def end_run(tracking_uri: str, run_id: str, status: str = "FINISHED", metrics: dict | None = None,
            tags: dict | None = None) -> None:
    client = MlflowClient(tracking_uri=tracking_uri)
    now = int(time.time() * 1000)
    retrying(lambda: client.log_batch(
        run_id, metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
        tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()]))
    retrying(lambda: client.set_terminated(run_id, status))


def run_status(tracking_uri: str, run_id: str) -> str:
    return MlflowClient(tracking_uri=tracking_uri).get_run(run_id).info.status


def warm(ctx: TrackingContext) -> None:
    """Open the store in this process (MLflow caches it per URI) before the first trial needs it."""
    retrying(lambda: ctx.client().get_experiment(ctx.experiment_id))


# -- the guard: one preprocessor artifact per search ------------------------------------------

def log_preprocessor_once(ctx: TrackingContext, blob: bytes) -> bool:
    """Log the preprocessor as an artifact of the parent run unless it is there already.

    Idempotent, so a retried task logs nothing twice: the sha256 tag is written after the
    artifact, as the commit marker; a retry after a half-done attempt rewrites the same path.
    Returns True when this call logged it.
    """
    client = ctx.client()
    run = retrying(lambda: client.get_run(ctx.parent_run_id))
    if run.data.tags.get(PREPROCESSOR_TAG) == ctx.preprocessor_sha256 and _has_preprocessor(client, ctx.parent_run_id):
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


# -- child runs --------------------------------------------------------------------------------

def child_runs(tracking_uri: str, parent_run_id: str, status: str | None = None) -> list:
    client = MlflowClient(tracking_uri=tracking_uri)
    parent = client.get_run(parent_run_id)
    query = f"tags.mlflow.parentRunId = '{parent_run_id}'"
    if status:
        query += f" and attributes.status = '{status}'"
    runs, token = [], None
    while True:
        page = client.search_runs([parent.info.experiment_id], query, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def start_child_run(ctx: TrackingContext, run_name: str, tags: dict) -> str:
    client = ctx.client()
    all_tags = {"mlflow.parentRunId": ctx.parent_run_id, PREPROCESSOR_TAG: ctx.preprocessor_sha256,
                **ctx.tags, **tags}
    run = retrying(lambda: client.create_run(ctx.experiment_id, run_name=run_name, tags=all_tags))
    return run.info.run_id


def finish_child_run(ctx: TrackingContext, run_id: str, params: dict, metrics: dict,
                     artifacts: dict[str, Path] | None = None, status: str = "FINISHED",
                     tags: dict | None = None) -> None:
    """Log params, metrics and tags in one batch, upload artifacts, close the run."""
    client = ctx.client()
    now = int(time.time() * 1000)
    retrying(lambda: client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
        params=[Param(k, str(v)) for k, v in params.items()],
        tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
    ))
    for artifact_path, local in (artifacts or {}).items():
        retrying(lambda: client.log_artifact(run_id, str(local), artifact_path))
    retrying(lambda: client.set_terminated(run_id, status))


def fail_child_run(ctx: TrackingContext, run_id: str, error: str, status: str = "FAILED") -> None:
    client = ctx.client()
    try:
        retrying(lambda: client.set_tag(run_id, "error", error[:4000]), attempts=3)
        retrying(lambda: client.set_terminated(run_id, status), attempts=3)
    except Exception:  # noqa: BLE001 - the sweep at the end of the search closes it
        pass


def finished_trial_run(ctx: TrackingContext, trial_id: int):
    """The FINISHED child run of ``trial_id`` if an earlier attempt completed it, else None."""
    client = ctx.client()
    query = (f"tags.mlflow.parentRunId = '{ctx.parent_run_id}' and tags.{TRIAL_TAG} = '{trial_id}'"
             " and attributes.status = 'FINISHED'")
    runs = retrying(lambda: client.search_runs([ctx.experiment_id], query, max_results=1))
    return runs[0] if runs else None


def close_stale_children(tracking_uri: str, parent_run_id: str, keep: set | frozenset = frozenset()) -> int:
    """Mark children still RUNNING (an attempt killed with its worker) KILLED; returns how many.

    ``keep``: run ids known to have ended (the trials that came back): never marked, even if a
    tracking server under load still reads them as RUNNING."""
    client = MlflowClient(tracking_uri=tracking_uri)
    stale = [r for r in child_runs(tracking_uri, parent_run_id, status="RUNNING") if r.info.run_id not in keep]
    for run in stale:
        retrying(lambda: client.set_terminated(run.info.run_id, "KILLED"))
    return len(stale)


# -- the registry --------------------------------------------------------------------------------

class DurationPyfunc(mlflow.pyfunc.PythonModel):
    """Raw TLC rows in, minutes out: loads the preprocessor and booster bundled with the model."""

    def load_context(self, context):
        import xgboost as xgb

        from taxi_hpo.core.features import Preprocessor
        from taxi_hpo.core.models import DurationPredictor

        booster = xgb.Booster()
        booster.load_model(context.artifacts["booster"])
        pre = Preprocessor.from_bytes(Path(context.artifacts["preprocessor"]).read_bytes())
        self._predictor = DurationPredictor(pre, booster)

    def predict(self, context, model_input: pd.DataFrame, params=None):  # hint: no schema warning
        return self._predictor.predict(model_input)


def register_model(ctx: TrackingContext, run_id: str, preprocessor_blob: bytes, booster_path: Path,
                   requirements: list[str]) -> str:
    """Log the bundled pyfunc in the best trial's run and make it ``MODEL_NAME@staging``."""
    import taxi_hpo

    mlflow.set_tracking_uri(ctx.tracking_uri)
    # Its warnings (no signature inferred, cloudpickle caution) are expected for this model.
    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        pre_path = Path(tmp) / PREPROCESSOR_FILE
        pre_path.write_bytes(preprocessor_blob)
        with mlflow.start_run(run_id=run_id):
            warnings.filterwarnings("ignore", message=".*Python object as `python_model`.*")
            info = mlflow.pyfunc.log_model(
                name="pyfunc",
                python_model=DurationPyfunc(),
                artifacts={"preprocessor": str(pre_path), "booster": str(booster_path)},
                pip_requirements=requirements,
                code_paths=[str(Path(taxi_hpo.__file__).parent)],
            )
    # MLflow prints "Successfully registered model ..." / "Created version ..." to stderr
    # unconditionally; the run's summary says what was registered, once.
    with contextlib.redirect_stderr(io.StringIO()):
        version = mlflow.register_model(info.model_uri, MODEL_NAME)
    client = ctx.client()
    client.set_registered_model_alias(MODEL_NAME, ALIAS, version.version)
    client.set_model_version_tag(MODEL_NAME, version.version, "parent_run_id", ctx.parent_run_id)
    return str(version.version)


def download_artifact(ctx: TrackingContext, run_id: str, artifact_path: str, dest: Path) -> Path:
    local = retrying(lambda: ctx.client().download_artifacts(run_id, artifact_path, str(dest)))
    return Path(local)


# -- resuming a search from what the store holds ------------------------------------------------

FAILED_TAG_PREFIX = "trial_failed."


@dataclass
class SearchRecord:
    """A search as the tracking store remembers it."""

    run_id: str
    experiment_id: str
    status: str
    params: dict
    trials: dict            # trial id -> {"params": {...str}, "loss", "run_id", "metrics"}
    failed: dict            # trial id -> {"error", "params"}, for trials that failed for good
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
            f"(--json) and the same --tracking-uri") from exc
    if parent.data.tags.get("taxi_hpo.role") != "search":
        raise TrackingError(f"run {run_id} is not a taxi-hpo search (no taxi_hpo.role=search tag): pass its parent run id")
    trials, lr_rmse = {}, None
    for run in child_runs(tracking_uri, run_id, status="FINISHED"):
        tag = run.data.tags.get(TRIAL_TAG)
        if tag is None:
            if run.data.tags.get("model") == "LinearRegression":
                lr_rmse = run.data.metrics.get("rmse_valid")
            continue
        trials[int(tag)] = {"params": dict(run.data.params), "loss": run.data.metrics.get("rmse_valid"),
                            "run_id": run.info.run_id, "metrics": dict(run.data.metrics),
                            "curve": {int(r): v for r, v in json.loads(run.data.tags.get(CURVE_TAG, "{}")).items()},
                            "pruned_at": int(run.data.tags[PRUNED_TAG]) if PRUNED_TAG in run.data.tags else None}
    failed = {int(k[len(FAILED_TAG_PREFIX):]): json.loads(v) for k, v in parent.data.tags.items()
              if k.startswith(FAILED_TAG_PREFIX) and int(k[len(FAILED_TAG_PREFIX):]) not in trials}
    return SearchRecord(run_id, parent.info.experiment_id, parent.info.status, dict(parent.data.params),
                        trials, failed, lr_rmse, dict(parent.data.tags))


WARM_TAG = "warm_start"          # on a search: JSON [{"from": "PARENT:TRIAL", "params": {...}}, ...]
WARM_FROM_TAG = "warm_start_from"  # on a warm trial's run: the search and trial its point came from


def latest_search(tracking_uri: str, experiment_id: str) -> str | None:
    """The most recent search of the experiment with at least one finished trial, or None."""
    client = MlflowClient(tracking_uri=tracking_uri)
    runs = retrying(lambda: client.search_runs([experiment_id], "tags.`taxi_hpo.role` = 'search'",
                                               order_by=["attributes.start_time DESC"], max_results=50))
    for run in runs:
        if any(TRIAL_TAG in child.data.tags for child in child_runs(tracking_uri, run.info.run_id, status="FINISHED")):
            return run.info.run_id
    return None


def best_points(tracking_uri: str, search_run_id: str, k: int) -> list[dict]:
    """The ``k`` best complete (not pruned) trials of a search: ``[{"from", "params", "rmse"}]``,
    params as MLflow stored them (strings)."""
    record = load_search(tracking_uri, search_run_id)
    complete = sorted((t["loss"], tid) for tid, t in record.trials.items()
                      if t["loss"] is not None and t.get("pruned_at") is None)
    return [{"from": f"{search_run_id}:{tid}", "params": record.trials[tid]["params"], "rmse": loss}
            for loss, tid in complete[:k]]


def experiment_name(tracking_uri: str, experiment_id: str) -> str:
    return MlflowClient(tracking_uri=tracking_uri).get_experiment(experiment_id).name


def tag_run(tracking_uri: str, run_id: str, tags: dict) -> None:
    client = MlflowClient(tracking_uri=tracking_uri)
    retrying(lambda: client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]))


def reopen_run(tracking_uri: str, run_id: str, tags: dict) -> None:
    client = MlflowClient(tracking_uri=tracking_uri)
    retrying(lambda: client.update_run(run_id, status="RUNNING"))
    retrying(lambda: client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]))


def mark_trial_failed(ctx: TrackingContext, trial_id: int, params: dict, error: str) -> None:
    """Remember on the parent that a trial failed for good (its retries spent), with its point."""
    value = json.dumps({"error": (error or "failed")[:300], "params": params})
    retrying(lambda: ctx.client().set_tag(ctx.parent_run_id, f"{FAILED_TAG_PREFIX}{trial_id}", value))
