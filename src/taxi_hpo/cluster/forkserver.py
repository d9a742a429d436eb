"""Local workers forked from one process that has already imported what a trial needs.

A spawned Dask worker starts a fresh interpreter and imports distributed, Prefect's task engine,
MLflow, XGBoost and our trial code before its first trial: ~5 CPU-seconds each, measured on 2
cores, where the flow process is importing and preparing the months at the same time. With
``multiprocessing``'s forkserver, one server process imports them once, started as the command
begins (beside the flow's own imports), and every worker of the LocalCluster, restarts included,
is a fork of it: ready in a fraction of a second, its imported pages shared. So are the workers
of a cluster that Dask's own managers create in this process (``--cluster-class
distributed.LocalCluster`` or ``distributed.SpecCluster``, see
:attr:`taxi_hpo.config.RunConfig.local_worker_processes`), ``--adapt`` included.

Dask supports the method (``distributed.worker.multiprocessing-method``); what it changes, and
what :func:`start` does about it:

- a forked worker inherits the *server's* environment, not the flow process's at the time the
  worker starts: the server is started with the environment a spawned worker would get (the
  nanny's pre-spawn variables and the workers' own), and the nanny still applies its ``env``;
- modules read some settings at import: the preload refreshes Prefect's settings in each worker
  (:func:`taxi_hpo.cluster.preload.dask_setup`);
- the worker's parent process is the server, which exits as soon as the process that started it
  is gone, so the watchdog still ends orphaned workers.

No Dask import here: the server starts before the command has imported anything heavy.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
import sys
from collections.abc import Iterable, Mapping

from taxi_hpo import environ
from taxi_hpo.cluster import preload

#: Set to ``spawn`` to start local workers as fresh interpreters (Dask's default) instead.
ENV = "TAXI_HPO_WORKER_START"

#: Imported by the server for every worker: Dask's worker and nanny, and our worker plugins and
#: preloads (the trial code comes from the caller's list).
BASE_MODULES = (
    "distributed",
    "distributed.nanny",
    "distributed.worker",
    "taxi_hpo.cluster.watchdog",
    "taxi_hpo.cluster.preload",
    "taxi_hpo.cluster.worker_data",
    "taxi_hpo.cluster.credentials",
)

#: The thread variables a nanny sets before it starts a worker (``cluster.spec`` sets them to the
#: trial's threads instead of Dask's 1).
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

#: Dask's other ``distributed.nanny.pre-spawn-environ`` default: read by glibc when a process
#: starts, so it must be in the server's environment to hold in a forked worker.
PRE_SPAWN = {"MALLOC_TRIM_THRESHOLD_": "65536"}

#: Read when ``distributed`` is imported, which the server does for its forks: Dask's loggers at
#: ERROR, as a created cluster's spawned workers get them from the flow's environment (a
#: LocalCluster's workers are silenced by its ``silence_logs`` anyway).
QUIET = {"DASK_LOGGING__DISTRIBUTED": "error"}

_STATE: dict[str, bool] = {}


def wanted() -> bool:
    """Whether local workers are forked, per :data:`ENV`: the default on Linux; elsewhere spawned
    (macOS's system libraries are not safe to fork without exec once loaded)."""
    method = os.environ.get(ENV, "forkserver" if sys.platform == "linux" else "spawn").strip().lower()
    return method == "forkserver" and "forkserver" in multiprocessing.get_all_start_methods()


def start(modules: Iterable[str], env: Mapping[str, str], threads_per_worker: int) -> bool:
    """Start the fork server of this process's local workers, importing :data:`BASE_MODULES` and
    ``modules`` (``module:function`` entries name their module).

    Its environment, so each forked worker's, is what a spawned worker would get: this process's,
    Dask's pre-spawn variables (:data:`PRE_SPAWN`, the thread variables at
    ``threads_per_worker``) and ``env``. Returns whether local workers will be forked from it
    (False: not wanted here, or it did not start); calling it again does nothing more.
    """
    if "running" in _STATE:
        return _STATE["running"]
    if not wanted():
        _STATE["running"] = False
        return False
    names = [*BASE_MODULES, *(preload.module_of(m) for m in modules if m.strip())]
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(dict.fromkeys(names)))
    server_env = {**PRE_SPAWN, **QUIET, **dict.fromkeys(THREAD_ENV, str(threads_per_worker)), **env}
    try:
        with environ.restored(server_env):
            os.environ.update(server_env)
            multiprocessing.forkserver.ensure_running()
    except OSError:
        _STATE["running"] = False
        return False
    _STATE["running"] = True
    return True


def running() -> bool:
    """Whether :func:`start` started the fork server in this process."""
    return _STATE.get("running", False)
