"""The local worker preload's quiet close (``taxi_hpo.cluster.watchdog``), on a real scheduler and
worker in this process."""

from __future__ import annotations

import asyncio
import logging

import distributed

from taxi_hpo.cluster import watchdog


def _heartbeat_failure(logger: logging.Logger) -> None:
    try:
        raise distributed.comm.CommClosedError(
            "in <TCP (closed) ConnectionPool.heartbeat_worker>: Stream is closed"
        )
    except OSError:
        logger.exception(f"{watchdog.HEARTBEAT_FAILED}.")


def _errors(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "distributed.worker" and r.levelno >= logging.ERROR
    ]


def test_a_closing_worker_logs_no_heartbeat_failure_a_running_one_does(caplog):
    logger = logging.getLogger("distributed.worker")

    async def scenario() -> tuple[list[str], list[str]]:
        async with distributed.Scheduler(host="127.0.0.1", dashboard_address=":0") as scheduler:
            worker = await distributed.Worker(scheduler.address, nthreads=1, dashboard=False)
            watchdog.dask_setup(worker)
            try:
                with caplog.at_level(logging.ERROR, logger="distributed.worker"):
                    _heartbeat_failure(logger)  # a running worker that lost its scheduler
                    logger.error("Unexpected exception during heartbeat. Closing worker.")
                    running = _errors(caplog)
                    caplog.clear()
                    await worker.close()
                    _heartbeat_failure(logger)  # the close's own in-flight heartbeat
                    logger.error("another worker error")
                    closed = _errors(caplog)
            finally:
                for f in [f for f in logger.filters if isinstance(f, watchdog.ClosingHeartbeat)]:
                    logger.removeFilter(f)
            return running, closed

    running, closed = asyncio.run(scenario())
    assert running == [
        f"{watchdog.HEARTBEAT_FAILED}.",
        "Unexpected exception during heartbeat. Closing worker.",
    ]
    assert closed == ["another worker error"]


def test_the_data_plugin_quiets_the_closing_heartbeat_of_every_worker_once(caplog):
    """Workers without the preload (a created cluster's, which Adaptive retires mid-search; remote
    ones) get the same filter from the search's data plugin, once however often it arrives."""
    from taxi_hpo.cluster import worker_data

    logger = logging.getLogger("distributed.worker")

    async def scenario() -> tuple[int, list[str], list[str]]:
        async with distributed.Scheduler(host="127.0.0.1", dashboard_address=":0") as scheduler:
            worker = await distributed.Worker(scheduler.address, nthreads=1, dashboard=False)
            plugins = [worker_data.WorkerData(key, b"data") for key in ("one", "two")]
            try:
                for plugin in plugins:
                    plugin.setup(worker)
                attached = sum(isinstance(f, watchdog.ClosingHeartbeat) for f in logger.filters)
                with caplog.at_level(logging.ERROR, logger="distributed.worker"):
                    await worker.close()
                    _heartbeat_failure(logger)
                    closed = _errors(caplog)
                    # Another worker of this process, running: its heartbeat failure is said
                    # (the closed one's filter must not hide it; CI once ran both in one process).
                    other = await distributed.Worker(scheduler.address, nthreads=1, dashboard=False)
                    plugins[0].setup(other)
                    _heartbeat_failure(logger)
                    running = _errors(caplog)
                    await other.close()
            finally:
                for plugin in plugins:
                    plugin.teardown(worker)
                for f in [f for f in logger.filters if isinstance(f, watchdog.ClosingHeartbeat)]:
                    logger.removeFilter(f)
            return attached, closed, running

    attached, closed, running = asyncio.run(scenario())
    assert attached == 1 and closed == []
    assert running == [f"{watchdog.HEARTBEAT_FAILED}."]
