"""One Prefect API for the flow and every Dask worker.

Left alone, each worker process would start its own temporary API server (measured: a 70 s
flow call, three servers, sqlite "database is locked"). When ``PREFECT_API_URL`` is not set,
start one server here, point this process and the workers it spawns at it, stop it at exit.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from contextlib import contextmanager
from typing import Iterator

import prefect.settings
from prefect.settings import PREFECT_API_URL, temporary_settings


def configured_api_url() -> str | None:
    return PREFECT_API_URL.value() or None


_EARLY: dict = {}


def start_early(startup_timeout_s: int = 60) -> None:
    """Begin starting the server in the background, to overlap with checks and the cluster start.

    Does nothing when an API is configured. ``prefect_api()`` then waits for this server.
    """
    if configured_api_url() or _EARLY:
        return
    server = _new_server()
    errors: list[BaseException] = []

    def start() -> None:
        try:
            server.start(timeout=startup_timeout_s)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=start, name="taxi-hpo-prefect-server", daemon=True)
    thread.start()
    _EARLY.update(server=server, thread=thread, errors=errors)


def _new_server():
    from prefect.server.api.server import SubprocessASGIServer

    # No telemetry: the server would log an error per attempt on a machine without internet.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    server = SubprocessASGIServer()
    # Prefect picks a random port in 8000-8999, which holds Dask's dashboard port 8787: the
    # cluster starts at the same time, and one of the two lost the race (measured: a uvicorn
    # "address already in use" traceback on the terminal). A port from the OS's ephemeral range
    # cannot collide with a well-known one.
    server.port = _free_port()
    # Register it as the default ephemeral server so nothing in this process starts a second.
    SubprocessASGIServer._instances[None] = server
    return server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def prefect_api(startup_timeout_s: int = 60) -> Iterator[str]:
    """Yield the API URL everything uses: the configured one, or a server started for this run."""
    url = configured_api_url()
    if url:
        yield url
        return
    from prefect.server.api.server import SubprocessASGIServer

    if _EARLY:
        server = _EARLY["server"]
        _EARLY["thread"].join()
        if _EARLY["errors"]:
            raise _EARLY["errors"][0]
        _EARLY.clear()
    else:
        server = _new_server()
        server.start(timeout=startup_timeout_s)
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url  # inherited by Dask worker processes
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            try:
                yield server.api_url
            finally:
                flush_to_api()
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        server.stop()
        SubprocessASGIServer._instances.pop(None, None)


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


__all__ = ["prefect_api", "configured_api_url", "flush_to_api", "quiet_drain_warnings", "prefect"]
