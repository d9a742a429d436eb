"""The search core: the space, ask/tell over TPE, and the trial scheduler (no Prefect, no Dask).

Names load on first use: the CLI reads constants from here before anything needs hyperopt.
"""

from importlib import import_module

_WHERE = {
    "MIN_MAX_DEPTH": "space",
    "reference_space": "space",
    "xgb_params": "space",
    "TrialOutcome": "scheduler",
    "TrialRunner": "scheduler",
    "Searcher": "scheduler",
    "run_search": "scheduler",
    "TPESearcher": "tpe",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f"taxi_hpo.search.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'taxi_hpo.search' has no attribute {name!r}")
