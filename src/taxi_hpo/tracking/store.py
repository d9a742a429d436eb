"""The store: reaching it, creating it, retrying it, links to it, and the parent run's life."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from taxi_hpo.config import PATIENCE_ENV, PATIENCE_S, is_local_uri
from taxi_hpo.errors import TrackingError, disk_error
from taxi_hpo.tracking._mlflow import Metric, MlflowClient, MlflowException, Param, RunTag, mlflow
from taxi_hpo.tracking.names import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

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
        """A new MLflow client on ``tracking_uri``."""
        return MlflowClient(tracking_uri=self.tracking_uri)


def patience_s() -> float:
    """The total wait of :func:`retrying` (``TAXI_HPO_TRACKING_PATIENCE_S``; checked by the CLI)."""
    raw = os.environ.get(PATIENCE_ENV, "").strip()
    return float(raw) if raw else PATIENCE_S


def backoff(patience: float, first_wait: float = 0.5, max_wait: float = 8.0) -> list[float]:
    """The sleeps between attempts: doubling from ``first_wait`` up to ``max_wait``, the last one
    cut so that they add up to ``patience``."""
    waits, wait = [], first_wait
    while sum(waits) < patience - 1e-9:
        waits.append(min(wait, patience - sum(waits)))
        wait = min(wait * 2, max_wait)
    return waits


def retrying(
    fn: Callable[[], T],
    *,
    attempts: int | None = None,
    first_wait: float = 0.5,
    max_wait: float = 8.0,
    what: str = "MLflow call",
) -> T:
    """Call ``fn`` again with exponential backoff while the store is busy or unreachable: for
    :func:`patience_s` seconds in all, or at most ``attempts`` times."""
    waits = backoff(patience_s(), first_wait, max_wait)
    if attempts is not None:
        waits = waits[: attempts - 1]
    for wait in [*waits, None]:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            if wait is None or not _transient(exc):
                raise
            time.sleep(wait)
    raise AssertionError("unreachable")


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) is a tracking server that did not answer: what
    :func:`retrying` waited for in vain."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MlflowException) and "API request to" in str(exc) and _transient(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def outage_error(tracking_uri: str, parent_run_id: str) -> TrackingError:
    """The one line for a search that a longer outage of its tracking server stopped."""
    return TrackingError(
        f"the MLflow tracking server {tracking_uri} did not answer for {patience_s():g} s "
        f"({PATIENCE_ENV} sets how long to wait): the search stopped; once the server answers, "
        f"`taxi-hpo run --resume {parent_run_id} --tracking-uri {tracking_uri}` closes the runs it "
        f"left RUNNING and runs the rest"
    )


def _transient(exc: BaseException) -> bool:
    if disk_error(exc) is not None:  # waiting does not free a disk
        return False
    text = str(exc).lower()
    markers = (
        "database is locked",
        "connection",
        "timed out",
        "timeout",
        "temporarily",
        "503",
        "502",
        "504",
        "max retries",
        "refused",
        "reset by peer",
    )
    return isinstance(exc, (ConnectionError, TimeoutError, OSError)) or any(m in text for m in markers)


def check_reachable(tracking_uri: str, timeout: float = 5.0) -> None:
    """Fail with one line when an HTTP tracking server does not answer ``/health``."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    url = tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            if resp.status != 200:
                raise TrackingError(f"tracking server {tracking_uri} answered {resp.status} on /health")
    except (TimeoutError, urllib.error.URLError, OSError) as exc:
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
    return (
        f"{base}/runs/{run_id}?workflowType=machine_learning"
        if run_id
        else f"{base}/runs?workflowType=machine_learning"
    )


def prepare_store(tracking_uri: str, experiment: str, artifact_root: Path | None = None) -> str:
    """Create (or open) the store and the experiment from this process; returns its id.

    Called by the flow process before any worker writes. A new local sqlite store is seeded
    (:func:`seed_sqlite_store`), so that searches started at once on a new folder do not race
    in MLflow's schema migration, and an experiment made meanwhile by another is used. A sqlite
    store is opened (and upgraded, when an older MLflow made it) by one process at a time
    (:func:`store_lock`), and one an interrupted upgrade left half-migrated is one line. A disk
    too full for the store is one line too, and a store this call began there is removed.
    """
    check_reachable(tracking_uri)
    with store_lock(tracking_uri):
        db = sqlite_path(tracking_uri)
        new = db is not None and not db.exists()
        try:
            seed_sqlite_store(tracking_uri)
            check_not_half_migrated(tracking_uri)
            return _open_experiment(tracking_uri, experiment, artifact_root)
        except TrackingError as exc:
            if new and disk_error(exc) is not None:  # the store this search began on a full disk
                for made in (db, *(db.with_name(db.name + end) for end in ("-journal", "-wal", "-shm"))):
                    with contextlib.suppress(OSError):
                        made.unlink()
            raise


#: How long a search waits for another process creating or upgrading the same sqlite store.
STORE_LOCK_TIMEOUT_S = 300.0


def sqlite_path(tracking_uri: str) -> Path | None:
    """The file of a ``sqlite:///`` store, or None for any other store."""
    return Path(tracking_uri.removeprefix("sqlite:///")) if tracking_uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def store_lock(tracking_uri: str, timeout_s: float = STORE_LOCK_TIMEOUT_S):
    """Hold the store's lock (:func:`lock_path`) while a sqlite store is opened: MLflow upgrades a
    store's schema when it opens it, and two processes upgrading one store at once leave it
    half-migrated (alembic's "table _alembic_tmp_metrics already exists"). Other stores (a
    server, PostgreSQL) take care of their own; no lock is held for them."""
    db = sqlite_path(tracking_uri)
    if db is None:
        yield
        return
    from filelock import FileLock, Timeout

    if not db.parent.is_dir():  # MLflow's own error says so, below
        yield
        return
    path = lock_path(tracking_uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), thread_local=False)
    try:
        lock.acquire(timeout=timeout_s)
    except Timeout:
        raise TrackingError(
            f"tracking store {tracking_uri} is busy: another process has been creating or upgrading it "
            f"for {timeout_s:.0f} s (it holds {lock.lock_file}); wait for it, or stop it"
        ) from None
    try:
        yield
    finally:
        lock.release()


def lock_path(tracking_uri: str) -> Path:
    """Where a sqlite store's lock lives: under :func:`cache_dir`, named by the store's resolved
    path (every search of this user on this machine finds the same one; nothing is left in the
    user's folder beside the store)."""
    db = sqlite_path(tracking_uri).resolve()
    return cache_dir() / "store-locks" / f"{hashlib.sha256(str(db).encode()).hexdigest()[:20]}.lock"


def check_not_half_migrated(tracking_uri: str) -> None:
    """One line for a sqlite store an interrupted schema upgrade left behind: alembic's batch
    migrations copy a table to ``_alembic_tmp_<name>`` and back, and a copy that is still there
    makes every later upgrade fail ("table _alembic_tmp_latest_metrics already exists")."""
    db = sqlite_path(tracking_uri)
    if db is None or not db.is_file():
        return
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            left = [
                name
                for (name,) in conn.execute("select name from sqlite_master where type = 'table'")
                if name.startswith("_alembic_tmp_")
            ]
    except sqlite3.Error:
        return  # not a database we can read: MLflow's own error says so
    if left:
        raise TrackingError(
            f"tracking store {db} was left half-migrated by an interrupted schema upgrade (table "
            f"{left[0]} is still there) and MLflow cannot open it: restore it from a backup, or move "
            f"it away (mv {db} {db}.broken) and run again for a new store"
        )


def _no_room(tracking_uri: str, disk: OSError) -> TrackingError:
    """The one line for a store that cannot be made or opened for want of room: nothing ran yet."""
    return TrackingError(
        f"tracking store {tracking_uri} cannot be written ({disk.strerror or disk}): free space on "
        f"that disk or point --tracking-uri at another one; no run was started"
    )


def _open_experiment(tracking_uri: str, experiment: str, artifact_root: Path | None) -> str:
    try:
        client = MlflowClient(tracking_uri=tracking_uri)
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
        try:
            return client.create_experiment(
                experiment, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
        except MlflowException as exc:  # another search made it just now: use theirs
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return client.get_experiment_by_name(experiment).experiment_id
    except Exception as exc:
        if (disk := disk_error(exc)) is not None:
            raise _no_room(tracking_uri, disk) from exc
        if isinstance(exc, MlflowException):
            raise TrackingError(
                f"tracking store {tracking_uri} cannot be used ({exc.message}): fix --tracking-uri"
            ) from exc
        # sqlalchemy / OS errors surface raw
        raise TrackingError(
            f"tracking store {tracking_uri} cannot be used ({exc}): fix --tracking-uri"
        ) from exc


def cache_dir() -> Path:
    """Where taxi-hpo keeps what it can rebuild: ``$TAXI_HPO_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/taxi-hpo`` (``~/.cache/taxi-hpo``)."""
    if os.environ.get("TAXI_HPO_CACHE_DIR"):
        return Path(os.environ["TAXI_HPO_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "taxi-hpo"


def seed_sqlite_store(tracking_uri: str) -> bool:
    """A new sqlite store starts as a copy of an empty, fully migrated one; True if seeded.

    MLflow creates a sqlite store by running its ~60 schema migrations, which is seconds of a
    small search and not safe across processes (two searches started at once on a fresh folder
    can leave it half-migrated). The migrated empty store is made once per MLflow version under
    :func:`cache_dir` and written into place with ``link``, which never replaces a store another
    process has just made. Nothing in it depends on where it lives: the copy has no ``Default``
    experiment, and MLflow adds one (rooted at ``./mlruns``, as for a store it makes itself) when
    it first opens it. Where anything here fails, MLflow creates the store itself as before.
    """
    target = sqlite_path(tracking_uri)
    if target is None or target.exists() or not target.parent.is_dir():
        return False
    try:
        template = _empty_store_template()
    except Exception:  # noqa: BLE001 - the copy is an optimisation: MLflow's own path follows
        return False
    try:
        tmp = target.parent / f".{target.name}.seed-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            with open(template, "rb") as src, open(tmp, "xb") as dst:  # the umask's mode, as MLflow's
                shutil.copyfileobj(src, dst)
            os.link(tmp, target)  # fails if the store appeared meanwhile: theirs is kept
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    except Exception as exc:  # noqa: BLE001 - the copy is an optimisation: MLflow's own path follows
        if (disk := disk_error(exc)) is not None:  # ... but it would fail half-way on the same disk
            raise _no_room(tracking_uri, disk) from exc
        return False
    return True


def _empty_store_template() -> Path:
    """The empty migrated sqlite store of the installed MLflow, made on first use."""
    folder = cache_dir()
    template = folder / f"mlflow-{mlflow.__version__}-empty.db"
    if template.is_file():
        return template
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        db = Path(scratch) / "empty.db"
        MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()  # migrates
        with contextlib.closing(sqlite3.connect(db)) as conn, conn:
            # the Default experiment's artifact root was resolved from this process's working
            # folder: MLflow makes it again, for the process that opens the copy, when it finds none
            conn.execute("delete from experiment_tags where experiment_id = 0")
            conn.execute("delete from experiments where experiment_id = 0")
        os.replace(db, template)  # whole or absent, also with several makers at once
    return template


def start_parent_run(
    tracking_uri: str, experiment_id: str, params: dict, tags: dict, run_name: str = "search"
) -> str:
    """Open the search's parent run ``run_name`` with ``params`` and ``tags`` (plus the tag
    ``taxi_hpo.role=search``); returns its run id."""
    client = MlflowClient(tracking_uri=tracking_uri)
    # Not retried: a create that reached the store before its reply was lost would make two runs.
    run = client.create_run(experiment_id, run_name=run_name, tags={**tags, "taxi_hpo.role": "search"})
    retrying(lambda: client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()]))
    return run.info.run_id


def end_run(
    tracking_uri: str,
    run_id: str,
    status: str = "FINISHED",
    metrics: dict | None = None,
    tags: dict | None = None,
) -> None:
    """Log ``metrics`` and ``tags`` on run ``run_id`` and end it as ``status``, retried while the
    store is busy."""
    client = MlflowClient(tracking_uri=tracking_uri)
    now = int(time.time() * 1000)
    retrying(
        lambda: client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
            tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
        )
    )
    retrying(lambda: client.set_terminated(run_id, status))


def run_status(tracking_uri: str, run_id: str) -> str:
    """The status of run ``run_id`` (``RUNNING``, ``FINISHED``, ``FAILED``, ``KILLED``, ...)."""
    return MlflowClient(tracking_uri=tracking_uri).get_run(run_id).info.status


def warm(ctx: TrackingContext) -> None:
    """Open the store in this process (MLflow caches it per URI) before the first trial needs it."""
    retrying(lambda: ctx.client().get_experiment(ctx.experiment_id))


def download_artifact(ctx: TrackingContext, run_id: str, artifact_path: str, dest: Path) -> Path:
    """Download artifact ``artifact_path`` of run ``run_id`` into the folder ``dest``; returns its
    local path."""
    local = retrying(lambda: ctx.client().download_artifacts(run_id, artifact_path, str(dest)))
    return Path(local)


def experiment_name(tracking_uri: str, experiment_id: str) -> str:
    """The name of experiment ``experiment_id``."""
    return MlflowClient(tracking_uri=tracking_uri).get_experiment(experiment_id).name


def tag_run(tracking_uri: str, run_id: str, tags: dict) -> None:
    """Set ``tags`` on run ``run_id`` (values as strings)."""
    client = MlflowClient(tracking_uri=tracking_uri)
    retrying(lambda: client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]))


def reopen_run(tracking_uri: str, run_id: str, tags: dict) -> None:
    """Mark run ``run_id`` RUNNING again (a resumed search) and set ``tags`` on it."""
    client = MlflowClient(tracking_uri=tracking_uri)
    retrying(lambda: client.update_run(run_id, status="RUNNING"))
    retrying(lambda: client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]))
