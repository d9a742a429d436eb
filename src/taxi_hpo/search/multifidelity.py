"""A multi-fidelity search: TPE proposes, a ladder of cheaper fits screens, the best go up (pure).

Every trial id is one fit. When a slot comes free the searcher first asks the
:class:`~taxi_hpo.search.promotion.Promoter` whether a configuration is due for the next rung
(ASHA's promotion, highest rung first); if none is, the trial is a new configuration at the
lowest rung. New configurations come from TPE told one loss per configuration, every
configuration having one, with the new configurations still in flight as liars (TPE scores a
pending point as loss ``+inf``, so concurrent proposals spread out). The first
``n_startup_jobs`` new configurations are random (hyperopt's start-up) or the warm-start points.

What TPE is told (``model``, :meth:`MultiFidelitySearcher.observations`): ``"merged"`` (the
default of a new search), once ``MERGE_AFTER`` configurations have a complete fit, each
configuration's loss at the highest rung it reached, a lower rung's moved onto the complete
fit's scale by the median gap between the rungs; ``"lowest"`` (what searches before it used, kept
for their resume), every configuration's loss at the lowest rung.

Why not BOHB's rule (model the highest rung with enough results): a higher rung holds only the
configurations the lower one promoted, a truncated sample, and TPE's density ratio is highest
outside it, where its "bad" set has no points either; so TPE modelled on the complete fits
proposed points the cheap rung ranks badly (their RMSE at 1/9 of the rows and 9 rounds 7.4-9.4
against 6.8-7.0 before), few of them were promoted, and the search lost: seed 1, 96 fits, best
6.4565 switching at 6 complete fits (BOHB's d + 1), 6.4517 at 20, 6.4436 never switching
(docs/benchmarks.md, "A multi-fidelity search, whole commands"). Merged, TPE's good set is the
best complete fits while its bad set keeps every screened point; and the cheap rung's own bias
(it favours what converges in 9 rounds on 1/9 of the rows) no longer decides which region TPE
refines (docs/benchmarks.md, "What TPE is told").

Deterministic: the same seed and the same ``suggest``/``record`` calls in the same order give
the same trials and promotions, so batch mode repeats exactly, and a resumed search replays.

A configuration's id is the trial id of its first fit; :meth:`MultiFidelitySearcher.fidelity`
says what a trial fits (rows, rounds), its rung, its configuration and the trial it was
promoted from. A promoted configuration is fitted again from scratch at its new rung: XGBoost
cannot continue a model onto rows it has not seen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from taxi_hpo.search.promotion import AUTO, ETA, Promoter, Rung
from taxi_hpo.search.tpe import DEFAULT_STARTUP, TPESearcher

#: What TPE models (see :meth:`MultiFidelitySearcher.observations`).
MODELS = ("lowest", "merged")
#: Complete fits before the merged model replaces the lowest rung's results.
MERGE_AFTER = 3


class MultiFidelitySearcher:
    """TPE over a ladder of fidelities with promotion (see the module docstring).

    Args:
        space: a hyperopt space (``reference_space()``).
        seed: seeds every proposal and the row sample the lower rungs fit on.
        n_startup_jobs: random new configurations before TPE models a rung.
        warm_points: the first new configurations (a warm start), in order.
        rungs: the ladder (:func:`taxi_hpo.search.promotion.ladder`).
        eta: a rung promotes its best ``1 / eta``.
    """

    def __init__(
        self,
        space: dict,
        seed: int,
        n_startup_jobs: int = DEFAULT_STARTUP,
        warm_points: list[dict] | None = None,
        rungs: Sequence[Rung] = AUTO,
        eta: int = ETA,
        model: str = "lowest",
    ):
        if model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
        self.model = model
        self.space, self.seed, self.n_startup_jobs = space, seed, n_startup_jobs
        self.warm_points = [dict(p) for p in (warm_points or [])]
        self.promoter = Promoter(rungs, eta)
        self._rng = np.random.default_rng(seed)
        self._trials: dict[int, tuple[int, int]] = {}  # trial id -> (config, rung)
        self._configs: dict[int, dict] = {}  # config id (its first trial's id) -> point
        self._fits: dict[int, dict[int, int]] = {}  # config -> {rung: trial id}
        self._losses: dict[int, float | None] = {}  # trial id -> loss, once recorded
        self._new_in_flight: set[int] = set()  # configs whose first fit is not recorded yet

    @property
    def ladder(self) -> tuple[Rung, ...]:
        """The rungs, cheapest first."""
        return self.promoter.ladder

    # -- the Searcher contract --------------------------------------------------------------
    def suggest(self, trial_id: int) -> dict:
        """A slot is free: a promotion if one is due, else a new configuration at the lowest rung."""
        if trial_id in self._trials:
            raise ValueError(f"trial {trial_id} was already suggested")
        promotion = self.promoter.take()
        if promotion is not None:
            config, rung = promotion
            self._trials[trial_id] = (config, rung)
            self._fits[config][rung] = trial_id
            return dict(self._configs[config])
        point = self._propose(trial_id, int(self._rng.integers(2**31 - 1)))
        self._add_config(trial_id, point)
        self._new_in_flight.add(trial_id)
        return dict(point)

    def record(self, trial_id: int, loss: float | None) -> None:
        """Trial ``trial_id`` ended: its loss (None or NaN: failed, never promoted)."""
        config, rung = self._where(trial_id)
        ok = loss is not None and math.isfinite(loss)
        self._losses[trial_id] = float(loss) if ok else None
        self.promoter.record(config, rung, self._losses[trial_id])
        self._new_in_flight.discard(config)

    def add_finished(
        self, trial_id: int, params: dict, loss: float | None, fidelity: dict | None = None
    ) -> None:
        """On resume: trial ``trial_id`` ended earlier, at ``params`` and the rung ``fidelity``
        says (None: a complete fit of a configuration of its own)."""
        self._restore(trial_id, params, fidelity)
        if self._fits[self._trials[trial_id][0]][0] == trial_id:  # a new configuration's first fit:
            self._rng.integers(2**31 - 1)  # the seed stream advances as its suggestion did
        self.record(trial_id, loss)

    def _restore(self, trial_id: int, params: dict, fidelity: dict | None) -> None:
        """Trial ``trial_id`` as suggested earlier (``fidelity``: its rung and configuration)."""
        if fidelity is None:
            fidelity = {"config": trial_id, "rung": self.promoter.top}
        config, rung = int(fidelity["config"]), int(fidelity["rung"])
        if not 0 <= rung <= self.promoter.top:
            raise ValueError(f"trial {trial_id} was fitted at rung {rung}, not on this ladder")
        if config not in self._configs:
            self._add_config(config, params)
        if rung > 0:
            self.promoter.mark_promoted(config, rung)
        self._trials[trial_id] = (config, rung)
        self._fits[config][rung] = trial_id

    def params(self, trial_id: int) -> dict:
        """The point trial ``trial_id`` fits."""
        return dict(self._configs[self._where(trial_id)[0]])

    def overwrite_params(self, trial_id: int, params: dict) -> None:
        """On resume: the point really evaluated differs from the replayed suggestion."""
        self._configs[self._where(trial_id)[0]] = dict(params)

    def state(self) -> dict:
        """This searcher as plain data (JSON): settings, the seed stream's position, every trial."""
        return {
            "kind": "multifidelity",
            "seed": self.seed,
            "n_startup_jobs": self.n_startup_jobs,
            "warm_points": [dict(p) for p in self.warm_points],
            "ladder": [[r.rows, r.rounds] for r in self.ladder],
            "eta": self.promoter.eta,
            "model": self.model,
            "rng": self._rng.bit_generator.state,
            "trials": [
                {
                    "trial_id": t,
                    "params": self.params(t),
                    "fidelity": self.fidelity(t),
                    "done": t in self._losses,
                    "loss": self._losses.get(t),
                }
                for t in sorted(self._trials)
            ],
        }

    @classmethod
    def from_state(cls, space: dict, state: dict) -> MultiFidelitySearcher:
        """The searcher :meth:`state` described, over ``space`` (the space it searched)."""
        if state.get("kind") != "multifidelity":
            raise ValueError(f"not the state of a multi-fidelity searcher: kind {state.get('kind')!r}")
        rungs = [Rung(rows, rounds) for rows, rounds in state["ladder"]]
        searcher = cls(
            space,
            state["seed"],
            state["n_startup_jobs"],
            state["warm_points"],
            rungs,
            state["eta"],
            state.get("model", "lowest"),
        )
        for trial in state["trials"]:
            searcher._restore(trial["trial_id"], trial["params"], trial["fidelity"])
            if trial["done"]:
                searcher.record(trial["trial_id"], trial["loss"])
            elif trial["fidelity"]["rung"] == 0:
                searcher._new_in_flight.add(trial["trial_id"])
        searcher._rng.bit_generator.state = state["rng"]
        return searcher

    # -- what a trial fits ---------------------------------------------------------------------
    def fidelity(self, trial_id: int) -> dict:
        """What trial ``trial_id`` fits, as plain data (logged on its MLflow run, in ``--json``):
        ``rung`` (0 lowest) ``of`` the ladder's rungs, ``rows`` (a share of the training rows)
        and ``rounds`` (a cap; None: the search's own), the ``seed`` of the row sample, its
        ``config`` and the trial it was ``promoted_from`` (None at the lowest rung), and whether
        it is ``complete``."""
        config, rung = self._where(trial_id)
        step = self.ladder[rung]
        return {
            "rung": rung,
            "of": len(self.ladder),
            "rows": step.rows,
            "rounds": step.rounds,
            "seed": self.seed,
            "config": config,
            "promoted_from": self._fits[config].get(rung - 1) if rung else None,
            "complete": step.complete,
        }

    def best(self) -> tuple[int, float] | None:
        """(trial id, loss) of the best complete fit, or None."""
        top = self.promoter.top
        done = [
            (loss, t) for t, loss in self._losses.items() if loss is not None and self._trials[t][1] == top
        ]
        if not done:
            return None
        loss, trial_id = min(done)
        return trial_id, loss

    # -- inside ----------------------------------------------------------------------------------
    def _where(self, trial_id: int) -> tuple[int, int]:
        if trial_id not in self._trials:
            raise KeyError(f"trial {trial_id} was never suggested")
        return self._trials[trial_id]

    def _add_config(self, trial_id: int, point: dict) -> None:
        self._configs[trial_id] = dict(point)
        self._fits[trial_id] = {0: trial_id}
        self._trials[trial_id] = (trial_id, 0)

    def _propose(self, trial_id: int, seed: int) -> dict:
        """A new configuration: a warm point, a random one (start-up) or TPE's (:meth:`observations`)."""
        index = len(self._configs)
        if index < len(self.warm_points):
            return self.warm_points[index]
        results = self.observations()
        random = index < self.n_startup_jobs or not any(math.isfinite(v) for v in results.values())
        # hyperopt draws at random below n_startup_jobs documents: a huge count is "always"
        model = TPESearcher(self.space, seed, n_startup_jobs=2**31 if random else 0)
        for config in sorted(results):
            model.add_pending(config, self._configs[config])
            model.record(config, results[config] if math.isfinite(results[config]) else None)
        for config in sorted(self._new_in_flight - set(results)):
            model.add_pending(config, self._configs[config])  # a liar while it runs
        return model.propose(trial_id, seed)

    def observations(self) -> dict[int, float]:
        """``{config: loss}`` TPE is told (``inf``: failed): with ``model="lowest"`` every
        configuration's loss at the lowest rung. With ``"merged"``, once ``MERGE_AFTER``
        configurations have a complete fit, each configuration's loss at the highest rung it has,
        moved onto the complete fit's scale by the median gap between that rung and the complete
        one over the configurations fitted at both: TPE's good set is then the best complete fits,
        while its bad set keeps every screened point (the truncated sample of BOHB's rule is gone)."""
        if self.model == "lowest":
            return self.promoter.results(0)
        top = self.promoter.top
        rungs = [self.promoter.results(r) for r in range(top + 1)]
        lowest, complete = rungs[0], rungs[top]
        finite = {c: v for c, v in complete.items() if math.isfinite(v)}
        if len(finite) < MERGE_AFTER:
            return lowest
        gaps = {}
        for rung, below in enumerate(rungs[:top]):
            both = [finite[c] - below[c] for c in finite if c in below and math.isfinite(below[c])]
            if len(both) >= MERGE_AFTER:
                gaps[rung] = float(np.median(both))
        told = {}
        for config in lowest:
            if config in complete:
                told[config] = complete[config]
                continue
            rung = max(r for r in range(top) if config in rungs[r])
            while rung not in gaps and rung > 0:
                rung -= 1
            loss = rungs[rung][config]
            told[config] = loss + gaps.get(rung, 0.0) if math.isfinite(loss) else math.inf
        return told
