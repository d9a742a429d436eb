"""What a local worker imports before its first trial, and the fork server local workers start from.

Light on purpose (no Prefect, no Dask): the command starts the fork server before its own heavy
imports, so that both happen at once (see :mod:`taxi_hpo.cluster.forkserver`).
"""

from __future__ import annotations

from taxi_hpo.cluster import forkserver, preload

#: What a local worker imports while it waits for its first trial (``cluster.preload`` reads it
#: from the worker's environment): Prefect's task engine, the trial task and what it calls. A
#: worker forked from the fork server has them imported already.
WARM_IMPORTS = (
    "taxi_hpo.prefect_api:refresh_settings",
    "prefect.task_engine",
    "taxi_hpo.flows.tasks",
    "taxi_hpo.flows.trials",
    "taxi_hpo.prefect_api:cache_context_hydration",
)


def worker_env(api_url: str) -> dict[str, str]:
    """What the flow adds to its local workers' environment: the Prefect API they report to (a
    worker process without one starts a temporary API server of its own the first time anything
    Prefect runs there outside a task: measured two extra servers, ~5 s before the first trial
    on 2 cores), and what to import while waiting."""
    return {"PREFECT_API_URL": api_url, preload.ENV: ",".join(WARM_IMPORTS)}


def start_fork_server(api_url: str, threads_per_worker: int) -> bool:
    """Start importing the trial code into the fork server of this process's local workers
    (:func:`taxi_hpo.cluster.forkserver.start`); whether they will be forked from it."""
    return forkserver.start(WARM_IMPORTS, worker_env(api_url), threads_per_worker)
