"""Dask: the only package that imports Dask, distributed or prefect-dask.

- :mod:`~taxi_hpo.cluster.spec`: the search's cluster (a local one, an address, a created one) and
  its task runner, Dask's settings for a search, the scheduler probe;
- :mod:`~taxi_hpo.cluster.workers`: what the flow asks of the cluster (slots, one task per worker);
- :mod:`~taxi_hpo.cluster.runner`: the trial runner the scheduler drives (placement, elastic
  threads, stops);
- worker plugins: :mod:`~taxi_hpo.cluster.worker_data` (the prepared data, once per worker),
  :mod:`~taxi_hpo.cluster.credentials` (the servers' credentials), and
  :mod:`~taxi_hpo.cluster.plugin_owner` (both taken back when their client goes);
- worker preloads: :mod:`~taxi_hpo.cluster.watchdog` (a local worker exits with its flow
  process) and :mod:`~taxi_hpo.cluster.preload` (imports while the worker waits).

Names of ``spec`` load on first use, so a preload importing this package stays light.
"""

from taxi_hpo._lazy import attach

_SPEC = (
    "ADAPTIVE_HINTS",
    "QUIET_DASK",
    "THREAD_ENV",
    "ClusterSpec",
    "LocalClusterStart",
    "SearchCluster",
    "configure_dask",
    "import_cluster_class",
    "probe_scheduler",
    "quiet_logs",
    "search_cluster",
    "tls_client_files",
)

__all__ = sorted(_SPEC)


__getattr__ = attach(__name__, dict.fromkeys(_SPEC, "spec"))
