"""Prefect: the flows and tasks of the search, and running them.

- :mod:`~taxi_hpo.flows.recipe`: the ``preprocess`` and ``taxi-hpo-search`` flows (the recipe);
- :mod:`~taxi_hpo.flows.tasks`: their tasks (each calls one function of the core or an adapter);
- :mod:`~taxi_hpo.flows.trials`: one trial's work on a worker (no Prefect, no Dask);
- :mod:`~taxi_hpo.flows.history`: what a search starts from (``--resume``, ``--warm-start``);
- :mod:`~taxi_hpo.flows.summary`: a finished search as a value, and its summary;
- :mod:`~taxi_hpo.flows.reporting`: the progress sink and the report;
- :mod:`~taxi_hpo.flows.signals`: Ctrl-C;
- :mod:`~taxi_hpo.flows.run`: :func:`execute`, the flow run against the Prefect API and the cluster;
- :mod:`~taxi_hpo.flows.warm`: what local workers import before their first trial, and the
  fork server they start from.
"""

from taxi_hpo._lazy import attach

#: name -> the module that holds it. Loaded on first use: a Dask worker importing
#: ``taxi_hpo.flows.tasks`` for its first trial does not also import the flows, the cluster
#: code and the report the flow process needs.
_NAMES = {
    "WARM_IMPORTS": "warm",
    "Reporter": "reporting",
    "current_reporter": "reporting",
    "execute": "run",
    "interrupted": "signals",
    "preprocess": "recipe",
    "search": "recipe",
    "trial": "tasks",
}

__all__ = sorted(_NAMES)


__getattr__ = attach(__name__, _NAMES)
