"""Ask/tell over hyperopt's TPE, without ``fmin`` (pure: no Prefect, no Dask).

Pending trials stay in the history as NEW documents, which TPE scores as loss +inf: a
built-in constant liar, so concurrent suggestions spread out instead of repeating.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import numpy as np
from hyperopt import STATUS_FAIL, STATUS_OK, Domain, Trials, space_eval, tpe
from hyperopt.base import JOB_STATE_DONE

DEFAULT_STARTUP = 20
#: Random trials after a warm start's points before TPE models the history (see startup_trials).
RANDOM_AFTER_WARM = 0


def startup_trials(in_flight: int, n_warm: int = 0, random_after_warm: int = RANDOM_AFTER_WARM) -> int:
    """How many trials TPE leaves to random sampling (hyperopt's ``n_startup_jobs``).

    Cold: hyperopt's 20 (the reference pipeline's), and at least the trials in flight (pending
    trials count toward it). Warm-started: the warm points *are* the start-up, plus
    ``random_after_warm`` random ones (default none). Counted toward hyperopt's 20 instead, as
    ``points_to_evaluate`` does, they left trials 6-20 of a warm search to random points, and the
    warm search reached the cold one's final best later than the cold one did (median 25 trials
    against 22, five seeds); with TPE right after them, 13 (5 random ones after them: 18) at the
    same mean final best (benchmarks/warm_start.py, docs/benchmarks.md).
    """
    if n_warm:
        return max(in_flight, n_warm + random_after_warm)
    return max(DEFAULT_STARTUP, in_flight)


class TPESearcher:
    """Suggests points of ``space`` one trial id at a time and learns from their losses.

    Deterministic: the same seed and the same sequence of ``suggest``/``record`` calls give
    the same suggestions, whatever process or timing produced the losses.

    Args:
        space: a hyperopt space (``reference_space()``).
        seed: seeds the generator that seeds every suggestion (as ``fmin(rstate=...)`` does).
        n_startup_jobs: random suggestions before TPE models the history; keep it at least
            the number of trials in flight, since pending trials count toward it.
        warm_points: points to evaluate first, in order (hyperopt's ``points_to_evaluate``):
            trials ``0 .. len-1`` are these, then TPE takes over, learning from them too.
    """

    def __init__(
        self,
        space: dict,
        seed: int,
        n_startup_jobs: int = DEFAULT_STARTUP,
        warm_points: list[dict] | None = None,
    ):
        self.space = space
        self.seed = seed
        self.n_startup_jobs = n_startup_jobs
        self.warm_points = [dict(p) for p in (warm_points or [])]
        self.trials = Trials()
        self._domain = Domain(_never_called, space)
        self._rng = np.random.default_rng(seed)
        self._algo = partial(tpe.suggest, n_startup_jobs=n_startup_jobs, verbose=False)

    # -- the contract -----------------------------------------------------------------------
    def suggest(self, trial_id: int) -> dict:
        """Called when a slot is free: returns the point to evaluate as trial ``trial_id``."""
        if any(doc["tid"] == trial_id for doc in self.trials.trials):
            raise ValueError(f"trial {trial_id} was already suggested")
        if trial_id < len(self.warm_points):
            self._rng.integers(2**31 - 1)  # the seed stream advances as for any suggestion
            self._insert(trial_id, self.warm_points[trial_id])
            return self.params(trial_id)
        return self.propose(trial_id, int(self._rng.integers(2**31 - 1)))

    def propose(self, trial_id: int, seed: int) -> dict:
        """TPE's point for trial ``trial_id`` from the history as it is, drawn with ``seed``
        (random below ``n_startup_jobs`` trials); pending until recorded. ``suggest`` draws the
        seed from the searcher's own stream; a searcher built as a model of other results (the
        multi-fidelity search's, :mod:`~taxi_hpo.search.multifidelity`) passes its own."""
        docs = self._algo([trial_id], self._domain, self.trials, seed)
        self.trials.insert_trial_docs(docs)
        self.trials.refresh()
        return self.params(trial_id)

    def record(self, trial_id: int, loss: float | None) -> None:
        """Called when trial ``trial_id`` ends: a finite loss, or None/NaN for a failed trial.

        A failed trial stays in the history as STATUS_FAIL, so TPE keeps learning from it.
        """
        doc = self._doc(trial_id)
        ok = loss is not None and math.isfinite(loss)
        doc["state"] = JOB_STATE_DONE
        doc["result"] = {"status": STATUS_OK, "loss": float(loss)} if ok else {"status": STATUS_FAIL}
        self.trials.refresh()

    def add_finished(
        self, trial_id: int, params: dict, loss: float | None, fidelity: dict | None = None
    ) -> None:
        """Called on resume for a trial evaluated earlier: inserts it with its real parameters.

        Advances the seed stream by one draw, as a suggestion would have. ``fidelity``: what a
        multi-fidelity search recorded for the trial; this searcher fits everything completely.
        """
        self._rng.integers(2**31 - 1)
        self._insert(trial_id, params)
        self.record(trial_id, loss)

    def add_pending(self, trial_id: int, params: dict) -> None:
        """A trial at a given point, pending (a liar) until recorded, without a draw of the seed
        stream: how a model of results fitted elsewhere is built."""
        self._insert(trial_id, params)

    def _insert(self, trial_id: int, params: dict) -> None:
        """A pending trial at a given point (its values in the space's own labels)."""
        labels = list(self._domain.params)
        misc = {
            "tid": trial_id,
            "cmd": self._domain.cmd,
            "workdir": self._domain.workdir,
            "idxs": {k: [trial_id] for k in labels},
            "vals": {k: [float(params[k])] for k in labels},
        }
        docs = self.trials.new_trial_docs([trial_id], [None], [self._domain.new_result()], [misc])
        self.trials.insert_trial_docs(docs)
        self.trials.refresh()

    def overwrite_params(self, trial_id: int, params: dict) -> None:
        """Called on resume when a replayed suggestion differs from what was evaluated."""
        doc = self._doc(trial_id)
        doc["misc"]["vals"] = {k: [float(params[k])] for k in self._domain.params}
        self.trials.refresh()

    def params(self, trial_id: int) -> dict:
        """The decoded point of a suggested trial."""
        vals = {k: v[0] for k, v in self._doc(trial_id)["misc"]["vals"].items() if v}
        return space_eval(self.space, vals)

    # -- state --------------------------------------------------------------------------------
    def state(self) -> dict:
        """This searcher as plain data (JSON): its settings, the seed stream's position and
        every trial so far (point, and loss once recorded); :meth:`from_state` rebuilds it."""
        trials = []
        for doc in sorted(self.trials.trials, key=lambda d: d["tid"]):
            result = doc["result"]
            done = doc["state"] == JOB_STATE_DONE
            loss = result.get("loss") if done and result.get("status") == STATUS_OK else None
            trials.append(
                {"trial_id": doc["tid"], "params": self.params(doc["tid"]), "done": done, "loss": loss}
            )
        return {
            "kind": "tpe",
            "seed": self.seed,
            "n_startup_jobs": self.n_startup_jobs,
            "warm_points": [dict(p) for p in self.warm_points],
            "rng": self._rng.bit_generator.state,
            "trials": trials,
        }

    @classmethod
    def from_state(cls, space: dict, state: dict) -> TPESearcher:
        """The searcher :meth:`state` described, over ``space`` (the same space it searched)."""
        if state.get("kind") != "tpe":
            raise ValueError(f"not the state of a TPE searcher: kind {state.get('kind')!r}")
        searcher = cls(space, state["seed"], state["n_startup_jobs"], state["warm_points"])
        for trial in state["trials"]:
            searcher._insert(trial["trial_id"], trial["params"])
            if trial["done"]:
                searcher.record(trial["trial_id"], trial["loss"])
        searcher._rng.bit_generator.state = state["rng"]
        return searcher

    # -- queries ----------------------------------------------------------------------------
    @property
    def n_suggested(self) -> int:
        """Trials in the history so far: suggested or added on resume, pending ones included."""
        return len(self.trials.trials)

    def best(self) -> tuple[int, float] | None:
        """(trial id, loss) of the best finished trial, or None."""
        done = [
            (d["result"]["loss"], d["tid"])
            for d in self.trials.trials
            if d["result"].get("status") == STATUS_OK
        ]
        if not done:
            return None
        loss, tid = min(done)
        return tid, loss

    def _doc(self, trial_id: int) -> dict[str, Any]:
        for doc in self.trials.trials:
            if doc["tid"] == trial_id:
                return doc
        raise KeyError(f"trial {trial_id} was never suggested")


def _never_called(_params):  # pragma: no cover - the scheduler evaluates trials, not hyperopt
    raise RuntimeError("TPESearcher evaluates nothing itself")
