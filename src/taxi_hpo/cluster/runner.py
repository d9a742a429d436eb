"""The scheduler's executor on Dask: trial tasks submitted through the flow's DaskTaskRunner.

Adapts :class:`~taxi_hpo.search.TrialRunner` to Prefect tasks on a Dask cluster: submission
with a priority, waiting on the first finished trials, turning a task's final state (or a
lost future) into a :class:`~taxi_hpo.search.TrialOutcome`.

Elastic threads travel the same way: the flow process places each trial on a worker and
decides every running trial's thread count (:class:`~taxi_hpo.search.threads.ThreadPlan`);
when counts change it posts them to the workers concerned (``Client.run``, a message through
the scheduler, a few milliseconds), where :func:`thread_source` lets the trial read its own
count between boosting rounds without any call of its own. Local and remote workers alike.
Posts are not waited for: a worker that died since the last look costs the scheduler its
connect timeout (30 s by default), which must not hold up the search.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable

import cloudpickle
import dask
import distributed

from taxi_hpo.cluster import worker_data
from taxi_hpo.search import TrialOutcome
from taxi_hpo.search.pruning import Pruner
from taxi_hpo.search.threads import ThreadPlan

# -- worker side: the thread counts posted for this process's trials --------------------------

_MAILBOX: dict[str, dict[int, tuple[int, int]]] = {}  # search key -> trial id -> (version, threads)
_MAILBOX_LOCK = threading.Lock()


def post_threads(search_key: str, version: int, threads: dict[int, int]) -> None:
    """Runs on a worker (through ``Client.run``): newer thread counts for some of its trials.

    Versions order the posts: one that arrives late never undoes a newer one.
    """
    with _MAILBOX_LOCK:
        box = _MAILBOX.setdefault(search_key, {})
        for trial_id, count in threads.items():
            if box.get(trial_id, (-1, 0))[0] < version:
                box[trial_id] = (version, int(count))


def thread_source(search_key: str, trial_id: int) -> Callable[[], int | None]:
    """What a trial asks between rounds: the latest count posted for it, or None (no news)."""

    def latest() -> int | None:
        entry = _MAILBOX.get(search_key, {}).get(trial_id)
        return entry[1] if entry else None

    return latest


_STOPS: dict[str, set] = {}  # search key -> trial ids asked to stop (the time budget ran out)


def post_stop(search_key: str, trial_ids: list[int]) -> None:
    """Runs on a worker (through ``Client.run``): these trials stop at their next round."""
    with _MAILBOX_LOCK:
        _STOPS.setdefault(search_key, set()).update(trial_ids)


def stop_source(search_key: str, trial_id: int) -> Callable[[], bool]:
    """What a trial asks between rounds: whether it was asked to stop."""
    return lambda: trial_id in _STOPS.get(search_key, ())


def forget_trial(search_key: str, trial_id: int) -> None:
    """Called by the trial when it ends: its mailbox entries are not needed any more."""
    with _MAILBOX_LOCK:
        _MAILBOX.get(search_key, {}).pop(trial_id, None)
        _STOPS.get(search_key, set()).discard(trial_id)


# -- flow side -----------------------------------------------------------------------------------


def cost_share(fidelity: dict | None, rounds: int) -> float:
    """Roughly what share of a complete fit a trial at ``fidelity`` costs (rows times rounds), for
    the order queued trials start in: a promotion before new points of the same kind."""
    if not fidelity:
        return 1.0
    capped = min(fidelity["rounds"] or rounds, rounds) / rounds
    return fidelity["rows"] * capped


class DaskTrialRunner:
    """Submits trial tasks through the flow's DaskTaskRunner; handles are trial ids.

    A future Dask reports as cancelled (seen under heavy load after a worker died: "already
    forgotten") is submitted again (the data is a worker plugin no worker loses: see
    ``worker_data``); trials are idempotent in the tracking store, so a rerun never makes a
    second finished run.

    Args:
        submit_trial: the trial task's ``submit`` (keyword arguments as in ``flows.trial``).
        data: what names the prepared data on the workers (a ``worker_data.DataRef``).
        nthread: the trial's base thread count (``--threads-per-worker``).
        plan: where trials run and their threads; None lets Dask place trials, each on ``nthread``.
        search_key: names this search's thread counts on the workers (with ``plan``).
        pruner: gives each trial, when it is submitted, its thresholds at the checkpoint rounds
            (its history is fed by the search's ``on_outcome``, so a batch sees earlier batches only).
        run_tags: ``{trial_id: tags}`` for those trials' MLflow runs (where a warm point came from).
        fidelity_of: a multi-fidelity search's ``fidelity(trial_id)``: what each trial fits (rows,
            rounds), sent with it; None: every trial is a complete fit.
        on_failed: called with ``(trial_id, params, error)`` for a trial that failed for good
            (the flow records it in the tracking store, where ``--resume`` finds it).
    """

    MAX_RESUBMITS = 3

    def __init__(
        self,
        submit_trial: Callable,
        data,
        ctx,
        rounds: int,
        nthread: int,
        client=None,
        plan: ThreadPlan | None = None,
        search_key: str | None = None,
        pruner: Pruner | None = None,
        run_tags: dict | None = None,
        on_failed: Callable[[int, dict, str], None] | None = None,
        fidelity_of: Callable[[int], dict] | None = None,
    ):
        self._submit_trial = submit_trial
        self._data, self._client = data, client
        self._ctx, self._rounds, self._nthread = ctx, rounds, nthread
        self.plan, self._search_key = plan, search_key or ctx.parent_run_id
        self.pruner = pruner if pruner is not None and pruner.active else None
        self._prune_at: dict[int, dict] = {}  # kept for a resubmission: judged as when first sent
        self._run_tags = run_tags or {}
        self._on_failed = on_failed
        self._fidelity_of = fidelity_of
        self._versions = itertools.count(1)
        self._futures: dict[int, object] = {}
        self._params: dict[int, dict] = {}
        self._priority: dict[int, float] = {}
        self.resubmits: dict[int, int] = {}
        self._states: dict[int, object] = {}  # finished trials' Prefect states, fetched once
        self.submit_bytes: dict[int, int] = {}
        self.thread_posts = 0
        self._posts: set = set()  # posts not answered yet (see _post)
        # following the cluster (see follow): workers counted, workers warming up, slot-seconds
        self._warm: Callable | None = None
        self._known: dict[str, int] = {}
        self._warming: dict[str, object] = {}
        self._target = 0
        self._slot_clock: tuple[float, int] | None = None
        self.slot_seconds = 0.0
        self.slots_seen: list[tuple[float, int]] = []  # (time, slots) at each change

    # -- slots follow the cluster ------------------------------------------------------------
    def follow(self, workers: dict[str, int], warm: Callable[[str], object], target_slots: int = 0) -> None:
        """Let :meth:`capacity` follow the workers present.

        Args:
            workers: ``{address: slots}`` of the workers the search started with (warmed up).
            warm: submits the warm-up to one new worker and returns its future, whose result
                is ``{"pool": id, "cores": n}``; the worker's slots count once it is done.
            target_slots: trials kept in flight even before workers hold them (``--adapt``: the
                cluster's maximum; queued trials are what makes Dask's ``Adaptive`` add workers).
        """
        self._warm, self._known, self._target = warm, dict(workers), target_slots
        self._mark_slots(sum(workers.values()))

    def capacity(self) -> int:
        """Trials to keep in flight now: the slots of the workers present and warmed up (at least
        one, and at least ``target_slots``). Workers that joined get their warm-up (their slots count from
        the next call after it is done), workers that left lose their slots."""
        if self._client is None or self._warm is None:
            return max(1, sum(self._known.values()))
        info = self._client.scheduler_info(n_workers=-1).get("workers", {})
        present = {
            addr: int(w.get("nthreads", 1))
            for addr, w in info.items()
            if w.get("status", "running") == "running"
        }  # not closing_gracefully (retiring)
        for addr in sorted(set(present) - set(self._known) - set(self._warming)):
            self._warming[addr] = self._warm(addr)
        for addr, future in list(self._warming.items()):
            if addr not in present:
                del self._warming[addr]
            elif future.done():
                del self._warming[addr]
                facts = future.result() if future.status == "finished" else None
                self._known[addr] = present[addr]
                if self.plan is not None:
                    facts = facts or {"pool": f"unknown:{addr}", "cores": present[addr] * self._nthread}
                    self.plan.add_worker(addr, facts["pool"], present[addr], facts["cores"])
        for addr in sorted(set(self._known) - set(present)):
            del self._known[addr]
            if self.plan is not None:
                self.plan.remove_worker(addr)
        slots = sum(self._known.values())
        self._mark_slots(slots)
        return max(1, slots, self._target)

    def stop_following(self) -> None:
        """The search ended: close the slot-seconds count."""
        if self._slot_clock is not None:
            self._mark_slots(self._slot_clock[1])
        self._warm = None
        for post in list(self._posts):  # a trial that ended needs no thread count any more
            post.cancel()

    def _mark_slots(self, slots: int) -> None:
        now = time.time()
        if self._slot_clock is not None:
            since, before = self._slot_clock
            self.slot_seconds += (now - since) * before
        if not self.slots_seen or self.slots_seen[-1][1] != slots:
            self.slots_seen.append((now, slots))
        self._slot_clock = (now, slots)

    @property
    def elastic(self) -> bool:
        """Whether running trials' thread counts follow the plan (a plan with elastic threads)."""
        return self.plan is not None and self.plan.elastic

    def submit(self, trial_id: int, params: dict, priority: float) -> int:
        """Submit trial ``trial_id`` at ``params`` as a trial task, on the worker the plan chooses
        (a preference) with the threads it gives; returns the trial id as the handle."""
        fidelity = self._fidelity_of(trial_id) if self._fidelity_of is not None else None
        weight = priority * cost_share(fidelity, self._rounds)  # a cheap fit claims fewer idle cores
        worker, threads = self.plan.place(trial_id, weight) if self.plan else (None, self._nthread)
        if self.pruner is not None and trial_id not in self._prune_at:
            self._prune_at[trial_id] = self.pruner.thresholds()
        parameters = {
            "trial_id": trial_id,
            "params": params,
            "data": self._data,
            "ctx": self._ctx,
            "rounds": self._rounds,
            "nthread": self._nthread,
            "start_threads": threads,
            "control_key": self._search_key,
            "elastic": self.elastic,
            "prune_at": self._prune_at.get(trial_id),
            "run_tags": self._run_tags.get(trial_id),
            "fidelity": fidelity,
        }
        # What this trial puts on the wire: the data travels as a reference (worker_data.DataRef).
        self.submit_bytes[trial_id] = len(cloudpickle.dumps(parameters))
        # Higher priority starts first among queued tasks: heaviest trials first in a batch. The
        # worker is a preference: if it is gone, Dask runs the trial elsewhere.
        where = {"workers": [worker], "allow_other_workers": True} if worker else {}
        with dask.annotate(priority=int(weight * 1000), **where):
            future = self._submit_trial(**parameters)
        self._futures[trial_id] = future
        self._params[trial_id] = params
        self._priority[trial_id] = priority
        return trial_id

    def post_thread_changes(self) -> None:
        """Send the running trials' new thread counts to their workers (called before waiting)."""
        if not self.elastic or self._client is None:
            return
        for worker, threads in self.plan.pending_changes().items():
            if self._warm is not None and worker not in self._known:
                continue  # it left: its trials are resubmitted, placed again
            self._post(post_threads, self._search_key, next(self._versions), threads, workers=[worker])
            self.thread_posts += 1

    def stop(self, handles) -> None:
        """The time budget ran out: the running trials stop at their next boosting round."""
        if self._client is None:
            return
        where = {self.plan.worker_of(h) for h in handles} if self.plan is not None else {None}
        workers = None if None in where else sorted(where)  # not placed: ask every worker
        self._post(post_stop, self._search_key, list(handles), workers=workers)

    def _post(self, fn: Callable, *args, workers: list[str] | None) -> None:
        """``fn(*args)`` on ``workers`` (None: all) through the scheduler, without waiting.

        The scheduler connects to each address it is given, and to one that is gone it retries
        for ``distributed.comm.timeouts.connect`` (30 s): waited for, a worker killed since the
        last look held the whole search for that long. A post that fails is lost, as when the
        worker is gone: its trials come back lost and are resubmitted."""
        try:
            run = self._client.run(fn, *args, workers=workers, on_error="ignore", asynchronous=True)
            post = asyncio.run_coroutine_threadsafe(run, self._client.loop.asyncio_loop)
        except Exception:  # noqa: BLE001 - a client closing: nothing left to tell the workers
            return
        self._posts.add(post)
        post.add_done_callback(self._posts.discard)

    def wait_any(self, handles, timeout: float | None = None):
        """Send the changed thread counts, then wait for the first of ``handles`` to finish and
        return those done; ``timeout``: after that many seconds, an empty list. A trial whose future
        Dask cancelled is submitted again (at most :attr:`MAX_RESUBMITS` times)."""
        # The scheduler refills free slots before it waits: sending the counts here, once per
        # refill, spares a running trial a give-and-take-back when a slot is refilled at once.
        self.post_thread_changes()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            futures = {h: self._futures[h].wrapped_future for h in handles}
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                # after a resubmission the wait goes on, within the same timeout
                distributed.wait(list(futures.values()), timeout=left, return_when="FIRST_COMPLETED")
            except distributed.client.FuturesCancelledError:
                pass  # handled below
            except (TimeoutError, distributed.TimeoutError):
                return []
            for h, future in futures.items():
                lost = future.cancelled() or self._landed_without_data(h, future)
                if lost and self.resubmits.get(h, 0) < self.MAX_RESUBMITS:
                    self._resubmit(h)
            done = [h for h in handles if self._futures[h].wrapped_future.done()]
            if done:
                if self.plan is not None:  # its cores are free now, even before its outcome is read
                    for handle in done:  # (a batch reads every outcome at its end)
                        self.plan.finish(handle)
                return done

    def _landed_without_data(self, handle: int, future) -> bool:
        """Whether a finished trial task failed because its worker held no copy of the data
        (``worker_data.DataMissing``: a worker closing under it), which another worker can run.
        The state is fetched once and kept for :meth:`outcome` (a result travels once)."""
        if future.status != "finished":
            return False
        if handle not in self._states:
            try:
                self._states[handle] = future.result()
            except Exception:  # noqa: BLE001 - not a state to read: handled as the task's outcome
                return False
        return worker_data.failed_for_missing_data(self._states[handle])

    def _resubmit(self, trial_id: int) -> None:
        self._states.pop(trial_id, None)
        self.resubmits[trial_id] = self.resubmits.get(trial_id, 0) + 1
        if self.plan is not None:
            self.plan.finish(trial_id)  # placed again, maybe elsewhere
        self.submit(trial_id, self._params[trial_id], self._priority[trial_id])

    def outcome(self, handle: int) -> TrialOutcome:
        """The outcome of the finished trial ``handle``: the task's result, or a failed outcome
        (reported to ``on_failed``) for a failed task or a lost future."""
        future = self._futures.pop(handle)
        params = self._params.pop(handle)
        self._prune_at.pop(handle, None)
        if self.plan is not None:
            self.plan.finish(handle)
        try:
            state = self._states.pop(handle, None) or future.wrapped_future.result()
        except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker: a failed trial, not a crash
            return self._failed(handle, params, f"{type(exc).__name__}: {exc}")
        if state.is_completed():
            return TrialOutcome(**state.result())
        return self._failed(handle, params, state.message or state.name)

    def _failed(self, trial_id: int, params: dict, error: str) -> TrialOutcome:
        if self._on_failed is not None:  # the flow records it (the trial's tags on the parent run)
            self._on_failed(trial_id, params, error)
        return TrialOutcome(trial_id, params, None, error=error)
