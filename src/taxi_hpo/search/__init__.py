"""The search core: the space, ask/tell over TPE, and the trial scheduler (no Prefect, no Dask)."""

from taxi_hpo.search.scheduler import TrialOutcome, TrialRunner, run_search
from taxi_hpo.search.space import MIN_MAX_DEPTH, reference_space, xgb_params
from taxi_hpo.search.tpe import TPESearcher

__all__ = [
    "MIN_MAX_DEPTH", "TPESearcher", "TrialOutcome", "TrialRunner", "reference_space",
    "run_search", "xgb_params",
]
