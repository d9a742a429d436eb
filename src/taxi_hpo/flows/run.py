"""Run the search flow: one Prefect API for the flow and its workers, and the search's cluster."""

from __future__ import annotations

from taxi_hpo import cluster
from taxi_hpo.cluster import preload
from taxi_hpo.config import RunConfig
from taxi_hpo.flows.recipe import search
from taxi_hpo.flows.reporting import Reporter, reporting_to
from taxi_hpo.flows.signals import watching_sigint
from taxi_hpo.prefect_api import cache_settings_serialization, prefect_api, start_early

#: What a local worker imports while it waits for its first trial (``cluster.preload`` reads it
#: from the worker's environment): Prefect's task engine, the trial task and what it calls.
WARM_IMPORTS = (
    "prefect.task_engine",
    "taxi_hpo.flows.tasks",
    "taxi_hpo.flows.trials",
    "taxi_hpo.prefect_api:cache_context_hydration",
)


def execute(cfg: RunConfig, reporter: Reporter | None = None) -> dict:
    """Run the search flow against one Prefect API and the cluster ``cfg`` asks for; its summary.

    A local cluster and the Prefect API server start side by side (each takes seconds).
    ``reporter``: where progress goes (the CLI's progress bar), or None.
    """
    # Workers get the API's URL in their environment: a worker process without one starts a
    # temporary API server of its own the first time anything Prefect runs there outside a task
    # (measured: two extra servers, ~5 s before the first trial on 2 cores).
    worker_env = {"PREFECT_API_URL": start_early(), preload.ENV: ",".join(WARM_IMPORTS)}
    with (
        reporting_to(reporter),
        watching_sigint(),
        cluster.search_cluster(
            cfg.workers,
            cfg.threads_per_worker,
            cfg.address,
            cfg.cluster_class,
            dict(cfg.cluster_kwargs),
            cfg.adapt,
            worker_env,
        ) as where,
    ):
        cache_settings_serialization()  # ~30 ms less of the flow per submitted trial (see there)
        with prefect_api():
            return search.with_options(task_runner=where.runner())(cfg.to_dict())
