"""Prefect: the flows and tasks of the search, and running them.

- :mod:`~taxi_hpo.flows.recipe`: the ``preprocess`` and ``taxi-hpo-search`` flows (the recipe);
- :mod:`~taxi_hpo.flows.tasks`: their tasks (each calls one function of the core or an adapter);
- :mod:`~taxi_hpo.flows.trials`: one trial's work on a worker (no Prefect, no Dask);
- :mod:`~taxi_hpo.flows.history`: what a search starts from (``--resume``, ``--warm-start``);
- :mod:`~taxi_hpo.flows.summary`: a finished search as a value, and its summary;
- :mod:`~taxi_hpo.flows.reporting`: the progress sink and the report;
- :mod:`~taxi_hpo.flows.signals`: Ctrl-C;
- :mod:`~taxi_hpo.flows.run`: :func:`execute`, the flow run against the Prefect API and the cluster.
"""

from taxi_hpo.flows.recipe import preprocess, search
from taxi_hpo.flows.reporting import Reporter, current_reporter
from taxi_hpo.flows.run import WARM_IMPORTS, execute
from taxi_hpo.flows.signals import interrupted
from taxi_hpo.flows.tasks import trial

__all__ = [
    "WARM_IMPORTS",
    "Reporter",
    "current_reporter",
    "execute",
    "interrupted",
    "preprocess",
    "search",
    "trial",
]
