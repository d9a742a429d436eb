"""Pruning: stop a trial at a checkpoint round when it is already worse than its peers (pure).

The flow process keeps the validation-RMSE curves of finished trials at the checkpoint rounds
(:func:`checkpoints`) and hands each new trial, when it is submitted, the highest RMSE it may
have at each checkpoint (:meth:`Pruner.thresholds`); the trial stops at the first checkpoint
where it is above. Workers share no state, and a trial is judged only against trials that had
finished before it started, so a batch is judged only against earlier batches: batch mode stays
reproducible.

Rules, after Optuna's ``MedianPruner`` and Ray Tune's ``ASHAScheduler`` (asynchronous
successive halving):

- ``median``: above the median of the finished trials' RMSE at that round (once at least
  ``min_trials`` of them reached it);
- ``asha``: outside the best ``1 / eta`` of the finished trials' RMSE at that round (once at
  least ``eta`` of them reached it).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping

RULES = ("none", "median", "asha")
ETA = 3
MEDIAN_MIN_TRIALS = 5


def checkpoints(rounds: int, eta: int = ETA, first: int | None = None) -> list[int]:
    """Rounds at which a trial may be pruned: ``first * eta**k`` below ``rounds`` (successive
    halving's rungs). ``first`` defaults to ``rounds / eta**2`` (at least 2): 30 rounds give 3, 9
    and 27, 100 give 11, 33 and 99; a first rung after one or two trees judged slow learning rates
    by trees that say little yet (seen: 10 of 16 trials stopped at round 2 of 30)."""
    if rounds < 1 or eta < 2:
        raise ValueError(f"need rounds >= 1 and eta >= 2, got {rounds}, {eta}")
    first = first or max(2, round(rounds / eta**2))
    rungs, r = [], first
    while r < rounds:
        rungs.append(r)
        r *= eta
    return rungs


class Pruner:
    """Thresholds for new trials from the curves of finished ones (see the module docstring).

    Args:
        rule: ``none``, ``median`` or ``asha``.
        rounds: the trials' boosting rounds (the checkpoints are derived from it).
    """

    def __init__(self, rule: str, rounds: int, eta: int = ETA, min_trials: int = MEDIAN_MIN_TRIALS):
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        self.rule, self.eta, self.min_trials = rule, eta, min_trials
        self.rounds = checkpoints(rounds, eta) if rule != "none" else []
        self._curves: dict[int, dict[int, float]] = {}

    @property
    def active(self) -> bool:
        """Whether a rule prunes at all (not ``none``)."""
        return self.rule != "none"

    def record(self, trial_id: int, curve: Mapping[int, float] | None) -> None:
        """A trial finished (pruned or not): its validation RMSE at the checkpoints it reached."""
        if curve:
            self._curves[trial_id] = {int(r): float(v) for r, v in curve.items() if math.isfinite(float(v))}

    def thresholds(self) -> dict[int, float]:
        """``{checkpoint round: highest RMSE allowed there}`` for a trial starting now; a round
        without enough history gets ``inf`` (the trial records its RMSE there, never stops)."""
        return {r: self._threshold(r) for r in self.rounds}

    def _threshold(self, round_: int) -> float:
        seen = sorted(c[round_] for c in self._curves.values() if round_ in c)
        if self.rule == "median" and len(seen) >= self.min_trials:
            return statistics.median(seen)
        if self.rule == "asha" and len(seen) >= self.eta:
            keep = max(1, len(seen) // self.eta)  # the best 1/eta go on
            return seen[keep - 1]
        return math.inf


def should_stop(round_: int, rmse: float, thresholds: Mapping[int, float]) -> bool:
    """Whether a trial at ``round_`` with validation ``rmse`` stops there."""
    limit = thresholds.get(round_)
    return limit is not None and rmse > limit
