"""One Prefect API for the flow and every Dask worker.

Left alone, each worker process would start its own temporary API server (measured: a 70 s
flow call, three servers, sqlite "database is locked"). When ``PREFECT_API_URL`` is not set,
start one server here, point this process and the workers it spawns at it, stop it at exit.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import prefect.settings
from prefect.settings import PREFECT_API_URL, temporary_settings


def configured_api_url() -> str | None:
    return PREFECT_API_URL.value() or None


@contextmanager
def prefect_api(startup_timeout_s: int = 60) -> Iterator[str]:
    """Yield the API URL everything uses: the configured one, or a server started for this run."""
    url = configured_api_url()
    if url:
        yield url
        return
    from prefect.server.api.server import SubprocessASGIServer

    # No telemetry: the server would log an error per attempt on a machine without internet.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    server = SubprocessASGIServer()
    # Register it as the default ephemeral server so nothing in this process starts a second.
    SubprocessASGIServer._instances[None] = server
    server.start(timeout=startup_timeout_s)
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url  # inherited by Dask worker processes
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            try:
                yield server.api_url
            finally:
                _flush_api_logs()
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        server.stop()
        SubprocessASGIServer._instances.pop(None, None)


def _flush_api_logs() -> None:
    """Send queued flow and task logs before the server goes, not into a closed port at exit."""
    try:
        from prefect.logging.handlers import APILogHandler

        APILogHandler.flush()
    except Exception:  # noqa: BLE001 - best effort: losing a log line must not fail the search
        pass


__all__ = ["prefect_api", "configured_api_url", "prefect"]
