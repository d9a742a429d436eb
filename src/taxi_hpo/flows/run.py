"""Run the search flow: one Prefect API for the flow and its workers, and the search's cluster."""

from __future__ import annotations

from taxi_hpo import cluster, timeline
from taxi_hpo.config import RunConfig
from taxi_hpo.flows.recipe import search
from taxi_hpo.flows.reporting import Reporter, reporting_to
from taxi_hpo.flows.signals import watching_sigint
from taxi_hpo.flows.warm import worker_env
from taxi_hpo.prefect_api import cache_settings_serialization, prefect_api, start_early, unjoined_heartbeats


def execute(cfg: RunConfig, reporter: Reporter | None = None) -> dict:
    """Run the search flow against one Prefect API and the cluster ``cfg`` asks for; its summary.

    A local cluster and the Prefect API server start side by side (each takes seconds).
    ``reporter``: where progress goes (the CLI's progress bar), or None.
    """
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
            worker_env(start_early(), cfg.resolved_tracking_uri),
        ) as where,
    ):
        cache_settings_serialization()  # ~30 ms less of the flow per submitted trial (see there)
        unjoined_heartbeats()  # the search's end does not wait for Prefect's heartbeat thread
        with prefect_api():
            summary = search.with_options(task_runner=where.runner())(cfg.to_dict())
            timeline.mark("flow_ended")
            return summary
