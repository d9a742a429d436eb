"""The search core: the space, ask/tell over TPE, and the trial scheduler (no Prefect, no Dask).

Names load on first use: the CLI reads constants from here before anything needs hyperopt.
"""

from taxi_hpo._lazy import attach

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


__getattr__ = attach(__name__, _WHERE)
