"""The only module that builds Dask clusters and the DaskTaskRunner.

A *slot* runs one trial at a time. Local cluster: ``workers`` processes, one slot each, and
XGBoost in each slot uses ``threads_per_worker`` threads. Existing scheduler (``address``):
every worker thread is a slot and XGBoost uses ``threads_per_worker`` threads per trial.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import dask
import distributed
from prefect_dask import DaskTaskRunner

from taxi_hpo import environ, timeline
from taxi_hpo.cluster import forkserver
from taxi_hpo.cluster.forkserver import THREAD_ENV
from taxi_hpo.errors import ClusterError

#: Dask's own periodic work, turned down for a search. Each Dask server wakes every 20 ms to
#: measure its event loop, every worker samples its threads' stacks every 10 ms for the
#: dashboard's profile page, the scheduler looks for work to steal every 100 ms (trials are
#: placed by the search itself) and each nanny reads its worker's memory every 100 ms. On 2
#: cores, two workers fitting the same 8 trials spent 8 % longer in XGBoost with the defaults
#: than with these (sum of fit times 59.8-60.0 s against 54.6-55.4 s, two runs each), and an
#: idle 2-worker cluster used 1.3 CPU-seconds in 20 s against 0.24. Also exported to remote
#: workers by cluster/local/common.sh.
QUIET_DASK = {
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.profile.enabled": False,
    "distributed.scheduler.work-stealing": False,
    "distributed.worker.memory.monitor-interval": "1s",
}


#: For a scheduler this process runs (a cluster manager's): Dask's ``Adaptive`` sizes the cluster
#: from the expected duration of the queued tasks, 0.5 s for a kind it has not timed yet, so the
#: first queued trials would ask for no worker at all; a trial takes tens of seconds.
ADAPTIVE_HINTS = {"distributed.scheduler.unknown-task-duration": "30s"}


def configure_dask(threads_per_worker: int) -> None:
    """Process-wide Dask settings for clusters this process creates: quiet periodic work, and the
    nanny's pre-spawn ``OMP_NUM_THREADS`` set to the trial's threads instead of 1."""
    threads = str(threads_per_worker)
    # Local workers forked from the fork server this process started (see cluster.forkserver).
    start = {"distributed.worker.multiprocessing-method": "forkserver"} if forkserver.running() else {}
    dask.config.set(
        {
            **QUIET_DASK,
            **ADAPTIVE_HINTS,
            **start,
            "distributed.nanny.pre-spawn-environ": {
                **dask.config.get("distributed.nanny.pre-spawn-environ", {}),
                **{n: threads for n in THREAD_ENV},
            },
        }
    )


def quiet_logs() -> None:
    """Dask's loggers at ERROR in this process (the command's terminal), also once distributed
    is imported: it sets its loggers from the dask config then."""
    logging.getLogger("distributed").setLevel(logging.ERROR)
    logging.getLogger("distributed.nanny").addFilter(_not_a_cancelled_close)
    dask.config.set({"logging.distributed": "error"})


def _not_a_cancelled_close(record: logging.LogRecord) -> bool:
    """False for the traceback a created cluster's nanny logs at ERROR when ``Adaptive`` retires
    its worker (``Nanny._on_worker_exit`` -> ``close`` -> ``rpc.close``: CancelledError): the
    retirement went as planned, and the terminal gets no traceback for it."""
    return not (record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError))


@dataclass(frozen=True)
class SearchCluster:
    """Where a search's trials run, as the flow sees it before connecting.

    ``runner()``: the prefect-dask task runner of the flow run; ``local_workers``: the worker
    processes of the LocalCluster this process started (None on an address or a created cluster).
    """

    runner: Callable[[], DaskTaskRunner]
    local_workers: int | None


@contextlib.contextmanager
def search_cluster(
    workers: int,
    threads_per_worker: int,
    address: str | None = None,
    cluster_class: str | None = None,
    cluster_kwargs: dict | None = None,
    adapt: tuple[int, int] | None = None,
    worker_env: dict[str, str] | None = None,
) -> Iterator[SearchCluster]:
    """The cluster of one search: a LocalCluster starting now in the background (``worker_env``
    added to its workers' environment), an existing scheduler (``address``), or a cluster that
    prefect-dask creates inside the flow run (``cluster_class``, with its kwargs and adaptivity).

    On exit the LocalCluster is closed and the variables that Dask writes into this process's
    environment (the nanny's thread limits, a cluster manager's logging) are put back.
    """
    spec = ClusterSpec(workers=workers, threads_per_worker=threads_per_worker, address=address)
    with environ.restored((*THREAD_ENV, "DASK_LOGGING__DISTRIBUTED")):
        if cluster_class:
            yield SearchCluster(
                lambda: _created(cluster_class, cluster_kwargs or {}, adapt, threads_per_worker), None
            )
        elif address:
            yield SearchCluster(spec.task_runner, None)
        else:
            local = spec.start_local(worker_env)
            try:
                yield SearchCluster(lambda: DaskTaskRunner(address=local.address()), workers)
            finally:
                local.close()


def _created(
    cluster_class: str, cluster_kwargs: dict, adapt: tuple[int, int] | None, threads_per_worker: int
) -> DaskTaskRunner:
    # prefect-dask's convention: the runner creates the cluster (and its adaptivity) inside the
    # flow run, and closes it with the flow run.
    configure_dask(threads_per_worker)
    # the processes it spawns log at INFO to stderr unless their environment says not to
    os.environ["DASK_LOGGING__DISTRIBUTED"] = "error"
    return DaskTaskRunner(
        cluster_class=cluster_class,
        cluster_kwargs=dict(cluster_kwargs),
        adapt_kwargs={"minimum": adapt[0], "maximum": adapt[1]} if adapt else None,
    )


def import_cluster_class(path: str):
    """The class behind ``--cluster-class``; ClusterError (one line) when it cannot be used."""
    import importlib

    module_name, _, name = path.rpartition(".")
    if not module_name:
        raise ClusterError(f"--cluster-class {path!r}: give a dotted path, e.g. distributed.LocalCluster")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ClusterError(
            f"--cluster-class {path}: cannot import {module_name} ({exc}); install it "
            f"(e.g. pip install dask-jobqueue)"
        ) from None
    cls = getattr(module, name, None)
    if cls is None or not callable(cls):
        raise ClusterError(f"--cluster-class {path}: {module_name} has no cluster class {name!r}")
    return cls


@dataclass(frozen=True)
class ClusterSpec:
    """Where trials run: a new LocalCluster (``address`` None) or an existing scheduler."""

    workers: int = 2
    threads_per_worker: int = 1
    address: str | None = None
    connect_timeout_s: float = 10.0

    def task_runner(self) -> DaskTaskRunner:
        """The runner for an existing scheduler (a local cluster starts with ``start_local``)."""
        if not self.address:
            raise ValueError("no address: start a local cluster with start_local() and use its address")
        return DaskTaskRunner(address=self.address)

    def start_local(self, env: dict[str, str] | None = None) -> LocalClusterStart:
        """Begin starting the LocalCluster in the background (overlaps the Prefect server start);
        ``env`` is added to the worker processes' environment."""
        return LocalClusterStart(self, env or {})

    def local_kwargs(self, env: dict[str, str] | None = None) -> dict:
        """The LocalCluster's keyword arguments: ``workers`` processes of one Dask thread each,
        XGBoost's ``threads_per_worker`` through the thread variables, ``env`` added to the workers'
        environment, the watchdog and import preloads."""
        # The nanny sets OMP_NUM_THREADS=1 in each worker (distributed.nanny.pre-spawn-environ)
        # and XGBoost caps nthread at it: measured CPU/wall 1.06 instead of 1.83 with 2 threads.
        threads = str(self.threads_per_worker)
        return {
            "n_workers": self.workers,
            "threads_per_worker": 1,
            "processes": True,
            "env": {**(env or {}), **{name: threads for name in THREAD_ENV}},
            "dashboard_address": os.environ.get("TAXI_HPO_DASHBOARD", ":8787"),
            "silence_logs": 40,
            # Workers exit within a second if the flow process dies (no orphans writing runs),
            # and import what trials need while they wait for the first one.
            "preload": ["taxi_hpo.cluster.watchdog", "taxi_hpo.cluster.preload"],
        }


class LocalClusterStart:
    """A LocalCluster being started in a thread; ``address()`` waits for it, ``close()`` ends it.

    The task runner connects by address: Prefect duplicates the task runner for each flow run,
    and a duplicate keeps the address but not a cluster object.
    """

    def __init__(self, spec: ClusterSpec, env: dict[str, str]):
        self._cluster = None
        self._error: BaseException | None = None
        # The nanny writes its pre-spawn variables into *this* process's environment
        # (os.environ.update before spawning, also on every worker restart) and never undoes
        # it: OMP_NUM_THREADS=1 would then cap XGBoost in this process and in everything it
        # starts later. Give the nanny our value, and put the environment back on close.
        self._saved_env = {name: os.environ.get(name) for name in THREAD_ENV}
        # Process-wide on purpose: the scheduler, the nannies (which hand their config to each
        # worker they spawn) and the flow's own client are all created after this.
        configure_dask(spec.threads_per_worker)
        self._thread = threading.Thread(
            target=self._start, args=(spec, env), name="taxi-hpo-cluster", daemon=True
        )
        self._thread.start()

    def _start(self, spec: ClusterSpec, env: dict[str, str]) -> None:
        try:
            self._cluster = distributed.LocalCluster(**spec.local_kwargs(env))
            timeline.mark("cluster_ready")
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            self._error = exc

    def address(self) -> str:
        """The scheduler's address, once the cluster has started; ClusterError if it did not
        start."""
        self._thread.join()
        if self._error is not None:
            raise ClusterError(f"the local Dask cluster did not start ({self._error})") from self._error
        return self._cluster.scheduler_address

    def close(self) -> None:
        """Close the cluster (once its start has ended) and put this process's thread variables
        back."""
        self._thread.join()
        try:
            if self._cluster is not None:
                self._cluster.close()
                timeline.mark("cluster_closed")
        finally:
            environ.restore(self._saved_env)


def probe_scheduler(
    address: str, timeout_s: float = 10.0, worker_probe: Callable[[], dict] | None = None
) -> dict:
    """Connect once to an existing scheduler and describe its workers.

    Args:
        address: ``tcp://host:port`` or ``tls://host:port``; TLS uses the certificates of the
            dask config (see :func:`tls_client_files`).
        timeout_s: how long to wait for the scheduler.
        worker_probe: run on every worker (``client.run``); it must import only what a bare
            worker has (define it inside a function, so it is pickled by value).

    Returns:
        ``{'workers': n, 'threads': n, 'versions': {addr: taxi_hpo version}}``, plus
        ``'probes': {addr: result or exception}`` when ``worker_probe`` is given.

    Raises:
        ClusterError: one line, when it cannot be reached in ``timeout_s`` or has no workers.
    """
    try:
        with distributed.Client(address, timeout=timeout_s, set_as_default=False) as client:
            info = client.scheduler_info(n_workers=-1)
            workers = info.get("workers", {})
            threads = sum(w.get("nthreads", 0) for w in workers.values())
            versions = _worker_versions(client) if workers else {}
            probes = client.run(worker_probe, on_error="return") if workers and worker_probe else None
    except (OSError, TimeoutError, distributed.TimeoutError) as exc:
        hint = (
            "; over TLS, also check that this client's certificates (DASK_CONFIG) are signed by "
            "the cluster's CA"
            if address.startswith("tls://")
            else ""
        )
        raise ClusterError(
            f"Dask scheduler {address} is unreachable within {timeout_s:g} s ({type(exc).__name__}): "
            f"start it or fix --address{hint}"
        ) from exc
    except ValueError as exc:
        raise ClusterError(f"--address {address!r} is not a Dask scheduler address ({exc})") from exc
    if not workers:
        raise ClusterError(
            f"Dask scheduler {address} has no workers: start some with `dask worker {address}`"
        )
    result = {"workers": len(workers), "threads": threads, "versions": versions}
    if probes is not None:
        result["probes"] = probes
    return result


def tls_client_files() -> dict:
    """The client's TLS files from the dask config: ``{'ca_file', 'cert', 'key'}`` (None if unset).

    The documented way to set them is ``DASK_CONFIG=<dir>/client.yaml`` as written by
    ``cluster/tls/make-certs.sh``, or the ``DASK_DISTRIBUTED__COMM__TLS__CA_FILE``,
    ``..._TLS__CLIENT__CERT`` and ``..._TLS__CLIENT__KEY`` variables. ``distributed.Client``
    (and so ``DaskTaskRunner``) reads the same settings.
    """
    security = distributed.Security()
    return {"ca_file": security.tls_ca_file, "cert": security.tls_client_cert, "key": security.tls_client_key}


def _worker_versions(client: distributed.Client) -> dict:
    def version() -> str:
        try:
            import taxi_hpo

            return taxi_hpo.__version__
        except ImportError:
            return "missing"

    return client.run(version)
