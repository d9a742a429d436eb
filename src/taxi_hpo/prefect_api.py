"""One Prefect API for the flow and every Dask worker.

Left alone, each worker process would start its own temporary API server (measured: a 70 s
flow call, three servers, sqlite "database is locked"). When ``PREFECT_API_URL`` is not set,
start one server here, point this process and the workers it spawns at it, stop it at exit.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import prefect.settings
from prefect.settings import PREFECT_API_URL, temporary_settings

from taxi_hpo import environ, timeline
from taxi_hpo.prefect_server import EARLY, TemporaryServer, migration_lock


def configured_credentials() -> tuple[str | None, str | None]:
    """``(PREFECT_API_AUTH_STRING, PREFECT_API_KEY)`` as Prefect's settings read them (None if unset)."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY

    return PREFECT_API_AUTH_STRING.value(), PREFECT_API_KEY.value()


def configured_api_url() -> str | None:
    """``PREFECT_API_URL`` as Prefect's settings read it; None if unset or empty."""
    return PREFECT_API_URL.value() or None


_EARLY = EARLY  # the server launched early (prefect_server.launch_unless_configured or start_early)


def start_early() -> str:
    """Launch the server now, to start while the run imports, checks and starts its cluster.

    Returns the API URL everything will use: the configured one (nothing is launched; a server
    ``prefect_server.launch_unless_configured`` launched on a wrong guess is stopped), or the
    one this server will listen on, known before it is up, so that a local cluster started
    meanwhile hands it to its workers. ``prefect_api()`` then waits for this server.
    """
    configured = configured_api_url()
    if configured:
        guessed = _EARLY.pop("server", None)
        if guessed is not None:
            guessed.stop()
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
    "TemporaryServer",  # its home is prefect_server; imported from here too
    "migration_lock",
    "prefect_api",
    "configured_api_url",
    "flush_to_api",
    "quiet_drain_warnings",
    "cache_settings_serialization",
    "cache_context_hydration",
    "prefect",
]
