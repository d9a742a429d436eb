"""Dask worker preload for local workers: how a worker ends.

A LocalCluster's nannies live in the flow process. If that process is SIGKILLed, its worker
processes would run on as orphans, finishing trials and writing runs a resumed search would
duplicate. Each worker polls its parent pid and exits within a second of losing it.

And a worker that is closing says nothing about the heartbeat it had in flight: ``Worker.close``
stops the heartbeat's periodic callback but closes its connections while a heartbeat may still be
waiting on one, and distributed then logs "Failed to communicate with scheduler during heartbeat"
at ERROR with two tracebacks (dask/distributed's known shutdown noise). On 2 busy cores it
reached the user's terminal after a search that had failed cleanly (CI, 2026-12-04). A running
worker that loses its scheduler still logs it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref

POLL_S = 0.2

#: The message distributed logs when a heartbeat's connection fails (``Worker.heartbeat``).
HEARTBEAT_FAILED = "Failed to communicate with scheduler during heartbeat"


def dask_setup(worker=None) -> None:  # called by distributed when the worker starts
    """Start a daemon thread that ends the worker process (exit status 3) once its parent process is
    gone, polled every :data:`POLL_S` seconds; and quiet the heartbeat of the worker's own close."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(POLL_S)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, name="taxi-hpo-parent-watchdog", daemon=True).start()
    quiet_closing_heartbeat(worker)


def quiet_closing_heartbeat(worker) -> None:
    """Count ``worker`` in this process's :class:`ClosingHeartbeat` filter on distributed's worker
    logger (one filter a process): from this preload on local workers, from the data plugin
    (``cluster.worker_data``) on every other worker, e.g. those a created cluster's ``Adaptive``
    retires mid-search (CI under load: the retired worker's heartbeat traceback on the terminal)."""
    if worker is None:
        return
    logger = logging.getLogger("distributed.worker")
    found = [f for f in logger.filters if isinstance(f, ClosingHeartbeat)]
    if found:
        found[0].workers.add(worker)
    else:
        logger.addFilter(ClosingHeartbeat(worker))


class ClosingHeartbeat(logging.Filter):
    """Drops :data:`HEARTBEAT_FAILED` while every worker of this process that it counts is closing
    or closed; keeps everything else. (A worker process holds one worker; a process with several,
    e.g. a threaded LocalCluster, keeps the line while any of them runs: the log record does not
    say which worker wrote it.)"""

    def __init__(self, worker):
        super().__init__()
        self.workers = weakref.WeakSet([worker])

    def filter(self, record: logging.LogRecord) -> bool:
        """False for the heartbeat failure of a closing worker."""
        if not str(record.msg).startswith(HEARTBEAT_FAILED):
            return True
        from distributed.core import Status

        closing = {Status.closing, Status.closed, Status.closing_gracefully, Status.failed}
        workers = list(self.workers)
        return not workers or any(w.status not in closing for w in workers)
