"""What a local worker imports before its first trial, and the fork server local workers start from.

Light on purpose (no Prefect, no Dask): the command starts the fork server before its own heavy
imports, so that both happen at once (see :mod:`taxi_hpo.cluster.forkserver`).
"""

from __future__ import annotations

from taxi_hpo.cluster import forkserver, preload
from taxi_hpo.config import DATABASE_SCHEMES, tracking_scheme

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


#: MLflow's store for database URIs (sqlite, PostgreSQL, ...): SQLAlchemy, alembic and the ORM,
#: ~0.8 s of imports that a worker's warm-up would otherwise do when it opens the store.
DATABASE_STORE = "mlflow.store.tracking.sqlalchemy_store"


def warm_imports(tracking_uri: str | None = None) -> tuple[str, ...]:
    """:data:`WARM_IMPORTS`, and MLflow's database store where ``tracking_uri`` names a database
    (a tracking server's workers talk HTTP and never load it)."""
    database = tracking_scheme(tracking_uri or "") in DATABASE_SCHEMES
    return (*WARM_IMPORTS, DATABASE_STORE) if database else WARM_IMPORTS


def worker_env(api_url: str, tracking_uri: str | None = None) -> dict[str, str]:
    """What the flow adds to its local workers' environment: the Prefect API they report to (a
    worker process without one starts a temporary API server of its own the first time anything
    Prefect runs there outside a task: measured two extra servers, ~5 s before the first trial
    on 2 cores), and what to import while waiting (:func:`warm_imports`)."""
    return {"PREFECT_API_URL": api_url, preload.ENV: ",".join(warm_imports(tracking_uri))}


def start_fork_server(api_url: str, threads_per_worker: int, tracking_uri: str | None = None) -> bool:
    """Start importing the trial code into the fork server of this process's local workers
    (:func:`taxi_hpo.cluster.forkserver.start`); whether they will be forked from it."""
    env = worker_env(api_url, tracking_uri)
    return forkserver.start(warm_imports(tracking_uri), env, threads_per_worker)
