"""The trial loop over any executor: asynchronous refill or synchronous batches (pure).

The searcher proposes and records; this module owns how many trials are in flight and when
the next suggestion is made. Executors (Prefect on Dask, a thread pool in tests) adapt to
:class:`TrialRunner`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from taxi_hpo.search.space import predicted_cost

MODES = ("async", "batch")


@dataclass
class TrialOutcome:
    """How one trial ended. A failed trial is a result (``loss`` None), not an exception."""

    trial_id: int
    params: dict
    loss: float | None
    started: float = 0.0  # epoch seconds when its slot began the trial
    finished: float = 0.0  # epoch seconds when its slot was free again
    fit_s: float = 0.0  # XGBoost train + predict seconds within that span
    metrics: dict = field(default_factory=dict)
    worker: str = ""
    run_id: str | None = None
    error: str | None = None
    cancelled: bool = False  # stopped by the time budget: to be run again on resume
    curve: dict = field(default_factory=dict)  # {checkpoint round: validation RMSE} (pruning)
    pruned_at: int | None = None  # the round a pruned trial stopped at
    # A multi-fidelity search's rung (search.multifidelity.fidelity_dict); empty: a complete fit
    fidelity: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the trial has a loss: complete or pruned, not failed or stopped by the budget."""
        return self.loss is not None

    @property
    def complete(self) -> bool:
        """Trained on all rows for all its rounds (or early stopping): not failed, not pruned, not
        a lower rung of a multi-fidelity search."""
        return self.ok and self.pruned_at is None and self.fidelity.get("complete", True)

    @property
    def busy_s(self) -> float:
        """Seconds its slot was busy with it: ``finished - started``, never negative."""
        return max(self.finished - self.started, 0.0)


@runtime_checkable
class Searcher(Protocol):
    """Proposes points one trial id at a time and learns from their losses (TPE here:
    :class:`~taxi_hpo.search.tpe.TPESearcher`). The scheduler calls only these.

    A searcher is deterministic: the same calls in the same order give the same points, which
    is what makes batch mode and ``--resume`` reproducible. ``state()`` is plain data (JSON) from
    which the searcher's class rebuilds it (``from_state``) to go on with the same points.
    """

    def suggest(self, trial_id: int) -> dict:
        """A slot is free: the point to evaluate as trial ``trial_id`` (pending until recorded)."""

    def record(self, trial_id: int, loss: float | None) -> None:
        """Trial ``trial_id`` ended: its loss, or None for a failed trial."""

    def add_finished(
        self, trial_id: int, params: dict, loss: float | None, fidelity: dict | None = None
    ) -> None:
        """On resume: a trial evaluated earlier, at ``params`` (and ``fidelity``: the rung it was
        fitted at, in a multi-fidelity search), in place of its suggestion."""

    def params(self, trial_id: int) -> dict:
        """The point of a suggested trial."""

    def overwrite_params(self, trial_id: int, params: dict) -> None:
        """On resume: the point really evaluated differs from the replayed suggestion."""

    def state(self) -> dict:
        """Everything needed to rebuild this searcher as it is now, as plain data."""


class TrialRunner(Protocol):
    """Runs trials somewhere; the scheduler only sees opaque handles."""

    def submit(self, trial_id: int, params: dict, priority: float) -> Hashable:
        """Called once per trial when the scheduler wants it started; must not block long.

        ``priority``: higher should start first among queued trials (longest-first batches).
        """

    def wait_any(self, handles: Sequence[Hashable], timeout: float | None = None) -> list[Hashable]:
        """Called with the handles in flight; blocks until at least one is done, returns those.

        ``timeout`` (only with a budget that stops running trials): give up after that many
        seconds and return an empty list.
        """

    def outcome(self, handle: Hashable) -> TrialOutcome:
        """Called once per finished handle; returns its outcome (a failure, never a raise)."""

    def stop(self, handles: Sequence[Hashable]) -> None:
        """Called (only with ``Budget(kill=True)``) when the budget ran out: these running
        trials should end as soon as they can; each still comes back through ``wait_any``, as
        an outcome with ``cancelled`` set."""


@dataclass(frozen=True)
class Budget:
    """When a search stops starting trials: at ``deadline`` (a ``clock()`` value; None: never).

    Running trials finish, unless ``kill``: then the runner is asked to stop them.
    """

    deadline: float | None = None
    kill: bool = False
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def from_now(
        cls, seconds: float | None, kill: bool = False, clock: Callable[[], float] = time.monotonic
    ) -> Budget:
        """A budget that ends ``seconds`` from now on ``clock`` (None: never)."""
        return cls(None if seconds is None else clock() + seconds, kill, clock)

    def over(self) -> bool:
        """Whether the deadline has passed (never, without one)."""
        return self.deadline is not None and self.clock() >= self.deadline

    def left(self) -> float | None:
        """Seconds left until the deadline (0.0 once past), or None without one."""
        return None if self.deadline is None else max(self.deadline - self.clock(), 0.0)


OnOutcome = Callable[[TrialOutcome], None]


Capacity = Callable[[], int]


def run_search(
    searcher: Searcher,
    runner: TrialRunner,
    n_trials: int,
    *,
    mode: str = "async",
    in_flight: int | Capacity = 1,
    known: dict[int, TrialOutcome] | None = None,
    on_outcome: OnOutcome | None = None,
    budget: Budget | None = None,
    poll_s: float = 2.0,
) -> list[TrialOutcome]:
    """Run trials ``0 .. n_trials-1``; returns their outcomes in trial order.

    ``async``: ``in_flight`` trials run at all times; a new suggestion is made as each ends.
    ``batch``: ``in_flight`` trials are suggested together, started longest-first, and all
    recorded before the next batch, so suggestions depend on the seed and batch size only.
    ``known``: outcomes of a resumed search, which are recorded instead of run again. In batch
    mode they are replayed batch by batch, so the missing trials get the very suggestions an
    uninterrupted search would have made.
    ``budget``: no trial (async) or batch starts once it is over; fewer outcomes come back.
    ``in_flight`` as a function (async only: a batch's size is fixed): asked before each refill,
    and every ``poll_s`` seconds while trials run, so slots that appear (a worker joined) are
    filled within ``poll_s``, and slots that go are not refilled; at least one trial is always
    in flight (it waits for a slot where the runner keeps it).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if callable(in_flight) and mode == "batch":
        raise ValueError("batch mode needs a fixed batch size, not a capacity function")
    if not callable(in_flight) and in_flight < 1:
        raise ValueError(f"in_flight must be >= 1, got {in_flight}")
    known = {t: o for t, o in (known or {}).items() if t < n_trials}
    budget = budget or Budget()
    if mode == "async":
        outcomes = _run_async(
            searcher,
            runner,
            list(range(n_trials)),
            in_flight,
            on_outcome or _ignore,
            known,
            budget,
            poll_s if callable(in_flight) else None,
        )
    else:
        outcomes = _run_batches(
            searcher, runner, list(range(n_trials)), in_flight, on_outcome or _ignore, known, budget
        )
    return sorted(outcomes, key=lambda o: o.trial_id)


def _run_async(
    searcher, runner, trial_ids, in_flight, on_outcome, known, budget, poll_s
) -> list[TrialOutcome]:
    capacity = in_flight if callable(in_flight) else (lambda: in_flight)
    outcomes: list[TrialOutcome] = []
    for trial_id in sorted(known):
        searcher.add_finished(
            trial_id, known[trial_id].params, known[trial_id].loss, known[trial_id].fidelity or None
        )
        outcomes.append(known[trial_id])
        on_outcome(known[trial_id])
    pending: dict[Hashable, int] = {}
    todo = iter([t for t in trial_ids if t not in known])
    exhausted, waiter = False, _Waiter(runner, budget)
    while True:
        slots = max(1, capacity())
        while not exhausted and len(pending) < slots:
            trial_id = next(todo, None) if not budget.over() else None
            if trial_id is None:
                exhausted = True
                break
            params = searcher.suggest(trial_id)
            pending[runner.submit(trial_id, params, predicted_cost(params))] = trial_id
        if not pending:
            return outcomes
        for handle in sorted(waiter.wait(pending, poll_s), key=pending.get):
            pending.pop(handle)
            outcomes.append(_finish(searcher, runner, handle, on_outcome))


def _run_batches(searcher, runner, trial_ids, batch_size, on_outcome, known, budget) -> list[TrialOutcome]:
    ids = list(trial_ids)
    outcomes: list[TrialOutcome] = []
    waiter = _Waiter(runner, budget)
    for start in range(0, len(ids), batch_size):
        batch = ids[start : start + batch_size]
        if budget.over() and any(t not in known for t in batch):
            break  # a replayed batch costs nothing; a new one would start after the budget
        suggested = [(trial_id, searcher.suggest(trial_id)) for trial_id in batch]
        replayed = [known[t] for t, _ in suggested if t in known]
        for outcome in replayed:
            if outcome.params and outcome.params != searcher.params(outcome.trial_id):
                searcher.overwrite_params(outcome.trial_id, outcome.params)
        # Heaviest first: the straggler starts at once instead of closing the batch alone.
        by_cost = sorted((s for s in suggested if s[0] not in known), key=lambda s: -predicted_cost(s[1]))
        pending = {runner.submit(t, p, predicted_cost(p)): t for t, p in by_cost}
        finished: list[Hashable] = []
        while pending:
            for handle in waiter.wait(pending):
                pending.pop(handle)
                finished.append(handle)
        done = [runner.outcome(h) for h in finished] + replayed
        # Record in trial order, so the history (and the next batch) never depends on timing.
        for outcome in sorted(done, key=lambda o: o.trial_id):
            searcher.record(outcome.trial_id, outcome.loss)
            on_outcome(outcome)
            outcomes.append(outcome)
    return outcomes


class _Waiter:
    """``runner.wait_any``, which with a killing budget wakes at the deadline, asks the runner
    once to stop what still runs, then waits for those trials to come back."""

    def __init__(self, runner, budget: Budget):
        self.runner, self.budget, self.stopped = runner, budget, False

    def wait(self, pending: dict, poll_s: float | None = None) -> list:
        """The handles done; with ``poll_s``, possibly none after that many seconds (the caller
        looks at its capacity again)."""
        while True:
            timeout = poll_s
            if self.budget.kill and self.budget.deadline is not None and not self.stopped:
                if self.budget.over():
                    self.runner.stop(list(pending))
                    self.stopped = True
                    continue
                timeout = self.budget.left() if timeout is None else min(timeout, self.budget.left())
            if timeout is None:
                return self.runner.wait_any(list(pending))
            done = self.runner.wait_any(list(pending), timeout=timeout)
            if done or poll_s is not None:
                return done


def _finish(searcher, runner, handle, on_outcome) -> TrialOutcome:
    outcome = runner.outcome(handle)
    searcher.record(outcome.trial_id, outcome.loss)
    on_outcome(outcome)
    return outcome


def _ignore(_outcome: Any) -> None:
    return None
