"""The scheduler's executor on Dask: trial tasks submitted through the flow's DaskTaskRunner.

Adapts :class:`~taxi_hpo.search.TrialRunner` to Prefect tasks on a Dask cluster: submission
with a priority, waiting on the first finished trials, turning a task's final state (or a
lost future) into a :class:`~taxi_hpo.search.TrialOutcome`.
"""

from __future__ import annotations

from typing import Callable

import cloudpickle
import dask
import distributed

from taxi_hpo import tracking
from taxi_hpo.search import TrialOutcome


class DaskTrialRunner:
    """Submits trial tasks through the flow's DaskTaskRunner; handles are trial ids.

    A future Dask reports as cancelled (seen under heavy load after a worker died: "already
    forgotten") is submitted again, with the data scattered again if its copy went too; trials
    are idempotent in the tracking store, so a rerun never makes a second finished run.

    Args:
        submit_trial: the trial task's ``submit`` (keyword arguments as in ``flows.trial``).
    """

    MAX_RESUBMITS = 3

    def __init__(self, submit_trial: Callable, data_future, ctx: tracking.TrackingContext, rounds: int,
                 nthread: int, prepared=None, client=None):
        self._submit_trial = submit_trial
        self._data, self._prepared, self._client = data_future, prepared, client
        self._ctx, self._rounds, self._nthread = ctx, rounds, nthread
        self._futures: dict[int, object] = {}
        self._params: dict[int, dict] = {}
        self._priority: dict[int, float] = {}
        self.resubmits: dict[int, int] = {}
        self.submit_bytes: dict[int, int] = {}

    def submit(self, trial_id: int, params: dict, priority: float) -> int:
        parameters = {"trial_id": trial_id, "params": params, "prepared": self._data, "ctx": self._ctx,
                      "rounds": self._rounds, "nthread": self._nthread}
        # What this trial puts on the wire: the data travels as a reference to the scattered copy.
        self.submit_bytes[trial_id] = len(cloudpickle.dumps(parameters))
        # Higher priority starts first among queued tasks: heaviest trials first in a batch.
        with dask.annotate(priority=int(priority * 1000)):
            future = self._submit_trial(**parameters)
        self._futures[trial_id] = future
        self._params[trial_id] = params
        self._priority[trial_id] = priority
        return trial_id
    def wait_any(self, handles):
        while True:
            futures = {h: self._futures[h].wrapped_future for h in handles}
            try:
                distributed.wait(list(futures.values()), return_when="FIRST_COMPLETED")
            except distributed.client.FuturesCancelledError:
                pass  # handled below
            for h, future in futures.items():
                if future.cancelled() and self.resubmits.get(h, 0) < self.MAX_RESUBMITS:
                    self._resubmit(h)
            done = [h for h in handles if self._futures[h].wrapped_future.done()]
            if done:
                return done

    def _resubmit(self, trial_id: int) -> None:
        self.resubmits[trial_id] = self.resubmits.get(trial_id, 0) + 1
        if self._data.cancelled() and self._prepared is not None and self._client is not None:
            self._data = self._client.scatter(self._prepared, broadcast=True, hash=False)
        self.submit(trial_id, self._params[trial_id], self._priority[trial_id])

    def outcome(self, handle: int) -> TrialOutcome:
        future = self._futures.pop(handle)
        params = self._params.pop(handle)
        try:
            state = future.wrapped_future.result()
        except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker: a failed trial, not a crash
            return self._failed(handle, params, f"{type(exc).__name__}: {exc}")
        if state.is_completed():
            return TrialOutcome(**state.result())
        return self._failed(handle, params, state.message or state.name)

    def _failed(self, trial_id: int, params: dict, error: str) -> TrialOutcome:
        tracking.mark_trial_failed(self._ctx, trial_id, params, error)
        return TrialOutcome(trial_id, params, None, error=error)


