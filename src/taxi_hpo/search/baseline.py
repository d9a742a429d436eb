"""The reference search: one process, hyperopt ``fmin``, plain ``Trials`` (pure, no Prefect/Dask).

The benchmark's baseline. It asks hyperopt exactly as the reference pipeline does; only the
evaluation is injected, so the caller decides how a trial is fitted and logged.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from hyperopt import STATUS_FAIL, STATUS_OK, Trials, fmin, tpe

from taxi_hpo.search.scheduler import TrialOutcome

#: Called as ``evaluate(trial_id, params)``; returns the outcome, a failure rather than a raise.
Evaluate = Callable[[int, dict], TrialOutcome]


def run_reference(
    space: dict,
    evaluate: Evaluate,
    n_trials: int,
    seed: int,
    on_outcome: Callable[[TrialOutcome], None] | None = None,
) -> list[TrialOutcome]:
    """Run ``n_trials`` trials of ``space`` through ``fmin`` with TPE; outcomes in trial order.

    Seeded as ``fmin(rstate=np.random.default_rng(seed))``, so it suggests what
    :class:`~taxi_hpo.search.TPESearcher` with the same seed suggests one trial at a time.
    A failed outcome (``loss`` None or NaN) is told to hyperopt as ``STATUS_FAIL``.
    """
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    outcomes: list[TrialOutcome] = []

    def objective(params: dict) -> dict:
        outcome = evaluate(len(outcomes), params)
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
        if outcome.loss is None or not math.isfinite(outcome.loss):
            return {"status": STATUS_FAIL}
        return {"status": STATUS_OK, "loss": float(outcome.loss)}

    fmin(
        objective,
        space,
        algo=tpe.suggest,
        max_evals=n_trials,
        trials=Trials(),
        rstate=np.random.default_rng(seed),
        show_progressbar=False,
        return_argmin=False,
    )
    return outcomes
