"""Dask worker preload: a local worker exits when the process that started it is gone.

A LocalCluster's nannies live in the flow process. If that process is SIGKILLed, its worker
processes would run on as orphans, finishing trials and writing runs a resumed search would
duplicate. Each worker polls its parent pid and exits within a second of losing it.
"""

from __future__ import annotations

import os
import threading
import time

POLL_S = 0.2


def dask_setup(worker=None) -> None:  # called by distributed when the worker starts
    """Start a daemon thread that ends the worker process (exit status 3) once its parent process is
    gone, polled every :data:`POLL_S` seconds."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(POLL_S)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, name="taxi-hpo-parent-watchdog", daemon=True).start()
