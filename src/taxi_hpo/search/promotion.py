"""Successive halving with promotion over a ladder of fidelities (pure).

A configuration is first fitted at the lowest rung of a ladder (a share of the training rows
and a cap on the boosting rounds, :class:`Rung`); whenever it ranks in the best ``1 / eta`` of
the results at its rung it is promoted: fitted again at the next rung, the last one being the
complete fit (all rows, all rounds). This is ASHA's promotion rule (Li et al., "A System for
Massively Parallel Hyperparameter Tuning", 2020): a slot that comes free takes a promotion when
there is one, from the highest rung down, and a new configuration otherwise, so no slot waits
for a rung to fill. Unlike pruning, a configuration judged early is not lost: it is promoted
later if the rung's results make room for it.

The promoter decides only from results recorded so far and breaks ties by configuration id:
fed the same results in the same order it makes the same promotions, which keeps batch mode
(results recorded batch by batch, in trial order) reproducible.

Why these rungs: docs/benchmarks.md, "A lower fidelity that ranks" (issue 19).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

ETA = 3


@dataclass(frozen=True)
class Rung:
    """A fidelity: ``rows``, the share of the training rows fitted (1.0: all); ``rounds``, the
    cap on boosting rounds (None: the search's own, with early stopping)."""

    rows: float
    rounds: int | None

    def __post_init__(self):
        if not 0.0 < self.rows <= 1.0:
            raise ValueError(f"rows is a share in (0, 1], got {self.rows}")
        if self.rounds is not None and self.rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {self.rounds}")

    @property
    def complete(self) -> bool:
        """All rows, all rounds: the fit a search without fidelities makes."""
        return self.rows >= 1.0 and self.rounds is None


COMPLETE = Rung(1.0, None)

#: The ladder the fidelity study found both large and dependable on 2021-01 -> 02 and
#: 2023-01 -> 02: one rung of 1/9 of the rows at 9 rounds (9 % of a complete fit's cost,
#: Spearman 0.62 / 0.57 with the final RMSE) below the complete fit.
AUTO = (Rung(1 / 9, 9), COMPLETE)

#: ``--fidelity`` names and their ladders: the study's (``auto``), and one dimension at a time:
#: the rows alone (1/9 of them, the search's rounds) and the rounds alone (9, all rows).
LADDERS: dict[str, tuple[Rung, ...]] = {
    "auto": AUTO,
    "rows": (Rung(1 / 9, None), COMPLETE),
    "rounds": (Rung(1.0, 9), COMPLETE),
}
#: ``--fidelity`` choices: ``none`` fits every trial completely (the reference's search).
FIDELITIES = ("none", *LADDERS)


def ladder_counts(fidelities: Iterable[dict]) -> list[dict]:
    """A search's ladder as it ran, from each trial's fidelity (``MultiFidelitySearcher.fidelity``;
    empty ones skipped): per rung, cheapest first, its rows and rounds, the trials fitted there
    and how many of them were promotions from the rung below."""
    rungs: dict[int, dict] = {}
    for f in fidelities:
        if not f:
            continue
        entry = rungs.setdefault(
            f["rung"], {"rung": f["rung"], "rows": f["rows"], "rounds": f["rounds"], "fits": 0, "promoted": 0}
        )
        entry["fits"] += 1
        entry["promoted"] += f.get("promoted_from") is not None
    return [rungs[r] for r in sorted(rungs)]


def ladder(name: str) -> tuple[Rung, ...]:
    """The ladder ``--fidelity name`` stands for."""
    if name not in LADDERS:
        raise ValueError(f"fidelity must be one of {', '.join(LADDERS)}, got {name!r}")
    return LADDERS[name]


class Promoter:
    """Which configuration goes up a rung next (see the module docstring).

    Args:
        ladder: the rungs, cheapest first, the last one complete.
        eta: a rung promotes the best ``1 / eta`` of its results.
    """

    def __init__(self, ladder: Sequence[Rung] = AUTO, eta: int = ETA):
        ladder = tuple(ladder)
        if not ladder or not ladder[-1].complete:
            raise ValueError("a ladder ends with the complete fit (all rows, all rounds)")
        if any(r.complete for r in ladder[:-1]):
            raise ValueError("only the last rung of a ladder is the complete fit")
        if eta < 2:
            raise ValueError(f"eta must be at least 2, got {eta}")
        self.ladder, self.eta = ladder, eta
        self._results: list[dict[int, float]] = [{} for _ in ladder]
        self._promoted: list[set[int]] = [set() for _ in ladder]

    @property
    def top(self) -> int:
        """The complete rung's index."""
        return len(self.ladder) - 1

    def record(self, config: int, rung: int, loss: float | None) -> None:
        """Configuration ``config`` was fitted at ``rung``: its loss, None or NaN if it failed (a
        failure takes its place in the rung, last, and is never promoted)."""
        if not 0 <= rung <= self.top:
            raise ValueError(f"rung {rung} is not on a ladder of {len(self.ladder)}")
        ok = loss is not None and math.isfinite(loss)
        self._results[rung][config] = float(loss) if ok else math.inf

    def results(self, rung: int) -> dict[int, float]:
        """``{config: loss}`` recorded at ``rung`` so far (a failure as ``inf``)."""
        return dict(self._results[rung])

    def mark_promoted(self, config: int, rung: int) -> None:
        """Configuration ``config`` was (on resume: had been) promoted to ``rung``."""
        if not 1 <= rung <= self.top:
            raise ValueError(
                f"rung {rung} is not a rung one is promoted to on a ladder of {len(self.ladder)}"
            )
        self._promoted[rung - 1].add(config)

    def promotable(self) -> list[tuple[int, int]]:
        """``(config, next rung)`` of every configuration due for promotion now, highest rung
        first, best first within a rung."""
        due = []
        for rung in reversed(range(self.top)):
            results = self._results[rung]
            ranked = sorted(results, key=lambda c: (results[c], c))[: len(results) // self.eta]
            due += [
                (c, rung + 1) for c in ranked if c not in self._promoted[rung] and math.isfinite(results[c])
            ]
        return due

    def take(self) -> tuple[int, int] | None:
        """The next promotion, marked as taken (its fit is to be run now), or None."""
        due = self.promotable()
        if not due:
            return None
        config, rung = due[0]
        self.mark_promoted(config, rung)
        return config, rung
