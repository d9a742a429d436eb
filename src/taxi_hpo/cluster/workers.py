"""The search's view of the cluster through its Dask client: slots, workers, one task on each.

The flow asks these questions of whatever cluster it runs on (local, an address, one a cluster
manager created); the answers are plain data (``{worker: value}``, a :class:`ThreadPlan`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import distributed

from taxi_hpo.cluster import credentials, worker_data
from taxi_hpo.errors import ClusterError
from taxi_hpo.search.threads import ThreadPlan


def slots(client: distributed.Client, local_workers: int | None) -> int:
    """Trials that run at once: one per local worker process, else one per worker thread."""
    if local_workers is not None:
        return local_workers
    return max(sum(client.nthreads().values()), 1)


def on_each_worker(client: distributed.Client, fn, *args) -> dict:
    """Submit ``fn(*args)`` once to every worker of the cluster, pinned there: ``{worker: future}``."""
    workers = list(client.scheduler_info(n_workers=-1)["workers"])
    return {w: client.submit(fn, *args, workers=[w], allow_other_workers=False, pure=False) for w in workers}


@contextlib.contextmanager
def running_on_each_worker(client: distributed.Client, fn, *args, wait_s: float = 30.0) -> Iterator[dict]:
    """:func:`on_each_worker` for the block: ``{worker: future}``, and on the way out (a failure
    before they were read) the tasks still running are waited for up to ``wait_s``, so that
    nothing the block shares with the workers is taken back under a running task."""
    futures = on_each_worker(client, fn, *args)
    try:
        yield futures
    finally:
        pending = [f for f in futures.values() if not f.done()]
        if pending:
            try:
                distributed.wait(pending, timeout=wait_s)
            except Exception:  # noqa: BLE001 - leaving anyway; the block's own error is what counts
                pass


def on_worker(client: distributed.Client, worker: str, fn, *args) -> distributed.Future:
    """Submit ``fn(*args)`` to ``worker`` only (a worker that joined the search late)."""
    return client.submit(fn, *args, workers=[worker], allow_other_workers=False, pure=False)


def gather_by_worker(client: distributed.Client, futures: dict) -> dict:
    """``{worker: result}`` of the futures of :func:`on_each_worker` that succeeded."""
    results = client.gather(list(futures.values()), errors="skip")
    done = [w for w, f in futures.items() if f.status == "finished"]
    return dict(zip(done, results, strict=False))


def run_on_each_worker(client: distributed.Client, fn, timeout_s: float = 10.0) -> None:
    """``fn()`` on every worker, waiting at most ``timeout_s``; a failure or a late worker is
    ignored (used to flush what the workers queued: not worth failing a finished search)."""
    try:
        distributed.wait(list(on_each_worker(client, fn).values()), timeout=timeout_s)
    except Exception:  # noqa: BLE001 - see above
        pass


def wait_for_first_worker(client: distributed.Client, timeout_s: float, what: str) -> None:
    """Wait until a created cluster has a worker (a batch system may queue it); ClusterError
    naming ``what`` after ``timeout_s``."""
    try:
        client.wait_for_workers(1, timeout=timeout_s)
    except (TimeoutError, distributed.TimeoutError):
        raise ClusterError(
            f"{what}: no worker joined within {timeout_s:.0f} s "
            "(a queued batch job? check the cluster's logs)"
        ) from None


def thread_plan(client: distributed.Client, warmed: dict, base: int, elastic: bool) -> ThreadPlan:
    """Where trials run and their threads: each worker's slots and the core pool it reported
    (``warmed``: ``{worker: {"pool", "cores"}}``; a worker that did not report is a pool of its own)."""
    workers, pool_cores = {}, {}
    for worker, worker_slots in client.nthreads().items():
        facts = warmed.get(worker) or {"pool": f"unknown:{worker}", "cores": worker_slots * base}
        workers[worker] = (facts["pool"], worker_slots)
        pool_cores[facts["pool"]] = facts["cores"]
    return ThreadPlan(workers, pool_cores, base=base, elastic=elastic)


def worker_count(client: distributed.Client) -> int:
    """The number of workers the cluster has now."""
    return len(client.nthreads())


@contextlib.contextmanager
def shared_with_workers(client: distributed.Client, data) -> Iterator[worker_data.DataRef]:
    """The search's data and this process's credentials on every worker, present or joining,
    for the block; taken back from the workers when it ends.

    First the tracking server's and the Prefect API's credentials (a worker plugin over the
    scheduler connection, never a task argument: see :mod:`~taxi_hpo.cluster.credentials`), then
    the prepared data, once to each worker and out of reach of Dask's memory manager (see
    :mod:`~taxi_hpo.cluster.worker_data`). Trials name the data by the :class:`DataRef` yielded.
    """
    handed = credentials.hand_to_workers(client)
    ref = None
    try:
        ref = worker_data.share(client, data)
        yield ref
    finally:
        credentials.withdraw(client, handed)
        worker_data.unshare(client, ref)
