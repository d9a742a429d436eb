"""One Prefect API for the flow and every Dask worker.

Left alone, each worker process would start its own temporary API server (measured: a 70 s
flow call, three servers, sqlite "database is locked"). When ``PREFECT_API_URL`` is not set,
start one server here, point this process and the workers it spawns at it, stop it at exit.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import prefect.settings
from prefect.settings import PREFECT_API_URL, temporary_settings

from taxi_hpo import environ, timeline
from taxi_hpo.errors import PrefectApiError


def configured_credentials() -> tuple[str | None, str | None]:
    """``(PREFECT_API_AUTH_STRING, PREFECT_API_KEY)`` as Prefect's settings read them (None if unset)."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY

    return PREFECT_API_AUTH_STRING.value(), PREFECT_API_KEY.value()


def configured_api_url() -> str | None:
    """``PREFECT_API_URL`` as Prefect's settings read it; None if unset or empty."""
    return PREFECT_API_URL.value() or None


class TemporaryServer:
    """Prefect's temporary API server, as ``SubprocessASGIServer`` runs it (uvicorn on Prefect's
    ``create_app`` factory, UI off, ephemeral mode), launched without importing Prefect's server
    package into this process: 3.4 s of imports that would compete with the run's own start.

    On Linux the server is asked to end with this process, even on SIGKILL: no orphan server.

    Its output goes to a log file, not to the run's terminal: stopping it mid-query cancels its
    background services and their database sessions, which SQLAlchemy logs as an ERROR with a
    traceback ("Exception during reset or similar ... CancelledError", CI 2026-12-06) on a search
    that succeeded. The file is removed when the server stops; a server that fails to start
    keeps it, and the error names it with its last line.
    """

    def __init__(self, port: int | None = None):
        self.port = port or _free_port()
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self.failed = False  # then its log stays, for the error that names it

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def launch(self) -> TemporaryServer:
        # The server also ends when the *thread* that launched it does (Linux's parent-death
        # signal): launch from the thread that holds ``prefect_api()``, normally the main one.
        import prefect

        # No telemetry by default: the server would log an error per attempt without internet.
        env = {
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            **os.environ,
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
            **prefect.settings.get_current_settings().to_environment_variables(exclude_unset=True),
        }
        env.pop("PREFECT_API_URL", None)
        uvicorn_args = [
            "--app-dir",
            str(prefect.__module_path__.parent),
            "--factory",
            "prefect.server.api.server:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "error",
            "--lifespan",
            "on",
        ]
        self._remove_log()
        fd, log_path = tempfile.mkstemp(prefix=f"taxi-hpo-prefect-server-{os.getpid()}-", suffix=".log")
        self.log_path = Path(log_path)
        with os.fdopen(fd, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _BOOT, str(os.getpid()), migration_lock(), *uvicorn_args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        atexit.register(self.stop)  # a run that fails before prefect_api() takes it over
        return self

    def wait_ready(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code == 3 and self._port_was_taken():  # between choosing and binding it: another
                self.port = _free_port()
                self.launch()
                continue
            if code is not None:
                self.failed = True
                raise PrefectApiError(self._failure(f"exited with code {code}"))
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self.api_url
            except OSError:
                pass
            time.sleep(0.1)
        self.failed = True
        self.stop()
        raise PrefectApiError(self._failure(f"did not answer within {timeout_s:.0f} s"))

    def _log_lines(self) -> list[str]:
        if self.log_path is None or not self.log_path.exists():
            return []
        return [
            line.strip() for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()
        ]

    def _port_was_taken(self) -> bool:
        # uvicorn exits 3 both when it cannot bind and when the app's start-up fails (a database
        # it cannot reach): only the first is cured by another port
        return any("address already in use" in line.lower() for line in self._log_lines())

    def _failure(self, what: str) -> str:
        lines = self._log_lines()
        # the exception's own line says why; uvicorn's "Application startup failed" does not
        last = next(
            (line for line in reversed(lines) if _EXCEPTION_LINE.match(line)), lines[-1] if lines else ""
        )
        said = f" ({last[:300]})" if last else ""
        return (
            f"the temporary Prefect API server {what}{said}; its log is {self.log_path}. Set "
            f"PREFECT_API_URL to a running server (`prefect server start`) to use that one instead"
        )

    def _remove_log(self) -> None:
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        if not self.failed:
            self._remove_log()


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")


def migration_lock() -> str:
    """The lock file a temporary server holds while it starts on its database.

    Prefect's server migrates its database and registers its block types as it starts; servers
    starting at once on one new (or older) database do both at once, and the losers die (seen
    with 4 searches at once on a fresh ``PREFECT_HOME``: alembic's "Online migration expected to
    match one row", a UNIQUE constraint failed on ``block_schema``). A sqlite database's lock sits
    beside its file (every home that shares it shares the lock); any other database's in
    ``PREFECT_HOME``.
    """
    settings = prefect.settings.get_current_settings()
    url = settings.server.database.connection_url
    url = url.get_secret_value() if url is not None else ""
    if url.startswith("sqlite") and ":///" in url and ":memory:" not in url:
        return url.split(":///", 1)[1].split("?", 1)[0] + ".migrate.lock"
    return str(Path(settings.home).expanduser() / "server-migrate.lock")


# ``python -m uvicorn ARGS`` that first asks Linux to SIGTERM it when this process dies (set in
# the child itself: no preexec_fn, which is unsafe in a threaded parent), and starts under
# ``migration_lock()``: held until the server answers, so servers starting at once on one
# database migrate it and register Prefect's block types one at a time (both race otherwise: an
# alembic "Online migration expected to match one row", a UNIQUE constraint on block_schema).
# A server that dies releases it with its process.
_BOOT = """
import os, runpy, signal, sys, threading, time, urllib.request
parent = int(sys.argv[1])
if sys.platform == "linux":
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        sys.exit(0)
import prefect.server.api.server  # the app's imports (seconds) before the lock, not under it
from filelock import FileLock
os.makedirs(os.path.dirname(os.path.abspath(sys.argv[2])), exist_ok=True)
lock = FileLock(sys.argv[2], thread_local=False)
lock.acquire()
health = "http://127.0.0.1:%s/api/health" % sys.argv[sys.argv.index("--port") + 1]
def release_when_serving():
    while True:
        try:
            with urllib.request.urlopen(health, timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        time.sleep(0.05)
    lock.release()
threading.Thread(target=release_when_serving, daemon=True).start()
sys.argv = ["uvicorn", *sys.argv[3:]]
runpy.run_module("uvicorn", run_name="__main__", alter_sys=True)
"""


def _free_port() -> int:
    # An OS-assigned port: Prefect's own choice (random in 8000-8999) holds Dask's dashboard
    # port 8787, and the cluster starts at the same time (measured: a uvicorn "address already
    # in use" traceback on the terminal).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_EARLY: dict = {}


def start_early() -> str:
    """Launch the server now, to start while the run imports, checks and starts its cluster.

    Returns the API URL everything will use: the configured one (nothing is launched), or the
    one this server will listen on, known before it is up, so that a local cluster started
    meanwhile hands it to its workers. ``prefect_api()`` then waits for this server.
    """
    configured = configured_api_url()
    if configured:
        return configured
    if "server" not in _EARLY:
        _EARLY["server"] = TemporaryServer().launch()
    return _EARLY["server"].api_url


@contextmanager
def prefect_api(startup_timeout_s: int = 60) -> Iterator[str]:
    """Yield the API URL everything uses: the configured one, or a server started for this run."""
    url = configured_api_url()
    if url:
        yield url
        return
    server = _EARLY.pop("server", None) or TemporaryServer().launch()
    try:
        url = server.wait_ready(startup_timeout_s)
        timeline.mark("prefect_api_ready")
        with environ.restored(["PREFECT_API_URL"]):
            os.environ["PREFECT_API_URL"] = url  # inherited by Dask worker processes
            with temporary_settings(updates={PREFECT_API_URL: url}):
                try:
                    yield url
                finally:
                    flush_to_api()
                    timeline.mark("api_flushed")
    finally:
        server.stop()
        timeline.mark("api_stopped")


def flush_to_api(timeout_s: float = 5.0) -> bool:
    """Send the log lines and events this process has queued for the API now, and wait.

    Prefect ships both from background services (log lines in 2 s batches); a process that
    ends, or an API that stops, before they run loses them or hangs at exit on them ("Error
    logging to API", "Still processing items"). Call from a thread without a running event loop
    (the main thread, a Dask task). True when everything was sent within the timeout.
    """
    try:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker
    except ImportError:  # a Prefect without these services: nothing queued to send
        return True
    sent = True
    for service in (APILogWorker, EventsWorker):
        try:
            _, pending = service.drain_all(timeout=timeout_s, at_exit=False)
            sent = sent and not pending
        except Exception:  # noqa: BLE001 - best effort: a lost log line must not fail the search
            sent = False
    return sent


@contextmanager
def without_heartbeats() -> Iterator[None]:
    """Flow runs that start in the block send Prefect no heartbeats.

    Prefect's flow engine beats from a thread that sleeps in one-second steps and is joined when
    the run ends: each flow run's end waits for it, 0.5 s on average (up to 1 s), measured as
    most of the preprocess subflow's teardown. A subflow that lasts a second needs no crash
    detection of its own (its parent's heartbeats say whether the process is alive); the search's
    flow run keeps them."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def unjoined_heartbeats() -> None:
    """A flow run's end no longer waits for its heartbeat thread (process-wide, once).

    Prefect's flow engine beats from a daemon thread that sleeps in one-second steps and joins it
    as the run ends (``prefect.flow_engine._send_heartbeats``): registered -> flow ended in the
    command's timeline went from 0.40 s to 0.17 s without the wait (medians of 5 pairs). The thread is told to
    stop either way, and a stopped thread returns at its next step without emitting anything, so
    the wait buys nothing. A Prefect whose engine has no such function is left as it is.
    """
    import inspect

    import prefect.flow_engine as engine

    original = getattr(engine, "_send_heartbeats", None)
    if original is None or getattr(original, "_taxi_hpo_unjoined", False):
        return
    if "join_on_exit" not in inspect.signature(original).parameters:
        return

    @contextmanager
    def unjoined(flow_engine, join_on_exit: bool = True):
        with original(flow_engine, join_on_exit=False):
            yield

    unjoined._taxi_hpo_unjoined = True
    engine._send_heartbeats = unjoined


_SETTINGS_CACHE: dict = {}


def cache_settings_serialization() -> None:
    """Serialize Prefect's settings once per settings object, not once per submitted task.

    Every ``task.submit`` on a DaskTaskRunner serializes the current context for the worker,
    and with it the whole settings model (a thousand fields, secrets rendered): measured 32 ms
    of the flow process's 38 ms per submitted trial, and part of the ~0.1 s between one trial's
    end and the next one's start on its worker. A run's settings do not change while it
    submits (a new ``temporary_settings`` is a new object, and misses the cache).
    """
    from prefect.context import SettingsContext

    original = SettingsContext.serialize
    if getattr(original, "_taxi_hpo_cached", False):
        return

    def serialize(self, include_secrets: bool = True) -> dict:
        key = (id(self.settings), id(self.profile), include_secrets)
        hit = _SETTINGS_CACHE.get(key)
        # The cache holds the objects themselves, so their ids cannot be reused meanwhile.
        if hit is not None and hit[0] is self.settings and hit[1] is self.profile:
            return hit[2]
        value = original(self, include_secrets=include_secrets)
        if len(_SETTINGS_CACHE) >= 32:
            _SETTINGS_CACHE.clear()
        _SETTINGS_CACHE[key] = (self.settings, self.profile, value)
        return value

    serialize._taxi_hpo_cached = True
    SettingsContext.serialize = serialize


_HYDRATED: dict = {}


def refresh_settings() -> None:
    """Prefect's settings read again from this process's environment.

    Prefect reads them once, when it is imported. A local worker forked from the fork server
    (``cluster.forkserver``) inherits the server's import, while its nanny has since set the
    worker's own environment (the flow's API URL among it)."""
    from prefect.context import refresh_global_settings_context

    refresh_global_settings_context()


def cache_context_hydration() -> None:
    """On a worker: rebuild the flow's settings once per distinct settings, not once per task.

    Before running a submitted task, Prefect's task engine rebuilds the flow's whole settings
    model from its serialized form (``hydrated_context``): measured ~40 ms of a worker's CPU
    per trial, spent before the trial can start. The same settings arrive with every trial of a
    search, so the rebuilt context is kept (keyed by the serialized settings' bytes) and a
    shallow copy of it is entered instead; everything else is hydrated as before.
    """
    import pickle
    from contextlib import contextmanager

    import prefect.task_engine as engine
    from prefect.context import SettingsContext

    original = engine.hydrated_context
    if getattr(original, "_taxi_hpo_cached", False):
        return

    @contextmanager
    def hydrated_context(serialized_context=None, client=None):
        settings = (serialized_context or {}).get("settings_context")
        if not settings:
            with original(serialized_context, client):
                yield
            return
        key = pickle.dumps(settings, protocol=5)
        context = _HYDRATED.get(key)
        if context is None:
            if len(_HYDRATED) >= 8:
                _HYDRATED.clear()
            context = _HYDRATED[key] = SettingsContext(**settings)
        rest = {k: v for k, v in serialized_context.items() if k != "settings_context"}
        # a copy: two worker threads may each be inside one
        with context.model_copy(), original(rest, client):
            yield

    hydrated_context._taxi_hpo_cached = True
    engine.hydrated_context = hydrated_context


def _is_drain_chatter(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Still processing items")


def quiet_drain_warnings() -> None:
    """Drop Prefect's "Still processing items: 1 items remaining..." warnings in this process.

    Its services print it whenever they are drained (at exit, or by ``flush_to_api``) with an
    item still queued, and the item it counts is the stop marker itself (measured: the queue
    held only ``None``): noise on every terminal, never news. Other warnings of those
    services (a full queue dropping items) still show.
    """
    for name in ("EventsWorker", "APILogWorker"):
        service_logger = logging.getLogger(name)
        if _is_drain_chatter not in service_logger.filters:
            service_logger.addFilter(_is_drain_chatter)


__all__ = [
    "prefect_api",
    "configured_api_url",
    "flush_to_api",
    "quiet_drain_warnings",
    "cache_settings_serialization",
    "cache_context_hydration",
    "prefect",
]
