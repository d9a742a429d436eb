"""A search on a virtual clock: the real scheduler and TPE, trial costs from a fitted model (pure).

For clusters we cannot rent: :class:`SimulatedRunner` is a :class:`~taxi_hpo.search.TrialRunner`
whose trials take the time a :class:`CostModel` predicts for their parameters and thread count,
on pools of cores shared through the same :class:`~taxi_hpo.search.threads.ThreadPlan` the real
runner uses (elastic threads included). ``run_search`` drives it exactly as it drives Dask, so
async refill, batches and TPE's suggestions are the real ones; only the clock is virtual.

What is modelled, and what is not:
- a trial's one-thread time from its parameters (log-linear in ``max_depth`` and the learning
  rate, fitted on measured trials; a measured point costs exactly what it cost), scaled by the
  rounds; ``k`` threads run it ``k / (1 + s (k - 1))`` times faster (Amdahl's law, ``s`` fitted
  from the same points measured on different thread counts, or given);
- per trial: the flow's serial work (suggestion and submission; TPE's ask grows with the
  history), the dispatch to a worker, and the bookkeeping after the fit (one core);
- a pool with more threads than cores runs every thread proportionally slower;
- not modelled: memory, network, a thread change waiting for the next boosting round.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from taxi_hpo.search.scheduler import TrialOutcome
from taxi_hpo.search.threads import ThreadPlan

#: 16 threads ran a trial 8.9x faster than one on the lent 16-core machine (FIELD-NOTES):
#: Amdahl's serial share 0.053. The default when the measurements hold one thread count only.
DEFAULT_SERIAL_SHARE = (16 / 8.9 - 1) / 15


@dataclass(frozen=True)
class ThreadScaling:
    """How much faster a trial runs on ``k`` threads than on one: ``k / (1 + serial (k - 1))``."""

    serial: float = DEFAULT_SERIAL_SHARE

    def speedup(self, threads: float) -> float:
        """How many times faster ``threads`` threads run a trial than one (below one thread counts
        as one)."""
        threads = max(float(threads), 1.0)
        return threads / (1.0 + self.serial * (threads - 1.0))

    @classmethod
    def from_speedup(cls, threads: float, speedup: float) -> ThreadScaling:
        """The scaling under which ``threads`` threads are ``speedup`` times faster than one."""
        if threads <= 1 or speedup <= 0:
            raise ValueError(f"need more than one thread and a positive speedup, got {threads}, {speedup}")
        return cls(max(0.0, (threads / speedup - 1.0) / (threads - 1.0)))


def _point_key(params: Mapping) -> tuple:
    return tuple(
        round(float(params[k]), 9)
        for k in ("max_depth", "learning_rate", "reg_alpha", "reg_lambda", "min_child_weight")
        if k in params
    )


def _features(params: Mapping) -> tuple[float, float, float]:
    return (
        1.0,
        math.log(max(float(params["max_depth"]), 1.0)),
        math.log(1.0 / max(float(params["learning_rate"]), 1e-6)),
    )


@dataclass
class Sample:
    """One measured trial: its point, its seconds of training and the threads it trained on."""

    params: dict
    seconds: float
    threads: float = 1.0
    loss: float | None = None


@dataclass
class CostModel:
    """One-thread seconds of a trial at ``rounds`` boosting rounds, from its parameters.

    ``log(seconds) = a + b log(max_depth) + c log(1 / learning_rate)``, least squares over the
    samples; a point that was measured costs what it cost (the median, if measured more than once).
    ``scale`` multiplies every cost (a
    faster or slower machine); costs grow linearly with the rounds asked for.
    """

    coef: tuple[float, float, float]
    rounds: int
    scaling: ThreadScaling = field(default_factory=ThreadScaling)
    known: dict = field(default_factory=dict)
    scale: float = 1.0
    residual_sd: float = 0.0

    @classmethod
    def fit(cls, samples: Iterable[Sample], rounds: int, scaling: ThreadScaling | None = None) -> CostModel:
        """The model of ``samples``' seconds, brought to one thread by ``scaling``, for ``rounds``
        rounds.

        With fewer than three distinct (depth, learning rate) points every unmeasured point costs
        their mean in log seconds. Raises ValueError when no sample has positive seconds.
        """
        samples = [s for s in samples if s.seconds > 0]
        if not samples:
            raise ValueError("no measured trials to fit a cost model on")
        scaling = scaling or ThreadScaling()
        one_thread = [(s.params, s.seconds * scaling.speedup(s.threads)) for s in samples]
        known: dict = {}
        for params, seconds in one_thread:
            known.setdefault(_point_key(params), []).append(seconds)
        rows = [(_features(p), math.log(sec)) for p, sec in one_thread]
        coef = (
            _least_squares(rows)
            if len({r[0][1:] for r in rows}) >= 3
            else (sum(y for _, y in rows) / len(rows), 0.0, 0.0)
        )
        residuals = [y - sum(c * x for c, x in zip(coef, xs)) for xs, y in rows]
        sd = math.sqrt(sum(r * r for r in residuals) / max(len(rows) - 3, 1))
        # A point measured several times costs its median: one noisy repeat does not move it.
        return cls(coef, rounds, scaling, {k: statistics.median(v) for k, v in known.items()}, 1.0, sd)

    def one_thread_s(self, params: Mapping, rounds: int | None = None) -> float:
        """Seconds one thread takes to train ``params`` for ``rounds`` (default: the model's)."""
        seconds = self.known.get(_point_key(params))
        if seconds is None:
            seconds = math.exp(sum(c * x for c, x in zip(self.coef, _features(params))))
        return self.scale * seconds * (rounds or self.rounds) / self.rounds


def _least_squares(rows: list[tuple[tuple[float, ...], float]]) -> tuple[float, float, float]:
    """Ordinary least squares through the normal equations (3 unknowns; no numpy needed)."""
    n = len(rows[0][0])
    ata = [[sum(x[i] * x[j] for x, _ in rows) for j in range(n)] for i in range(n)]
    atb = [sum(x[i] * y for x, y in rows) for i in range(n)]
    for i in range(n):  # a touch of ridge: a point set that barely varies stays solvable
        ata[i][i] += 1e-9 * max(1.0, ata[i][i])
    # Gaussian elimination with partial pivoting
    m = [row[:] + [b] for row, b in zip(ata, atb)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(n):
            if r != col and m[col][col]:
                f = m[r][col] / m[col][col]
                m[r] = [a - f * b for a, b in zip(m[r], m[col])]
    return tuple(m[i][n] / m[i][i] for i in range(n))


class NearestLoss:
    """The loss of the nearest measured point (log learning rate, depth, log regularisation):
    enough for TPE to steer the simulated search the way the measured ones went."""

    def __init__(self, samples: Iterable[Sample]):
        self.points = [(self._vector(s.params), s.loss) for s in samples if s.loss is not None]
        if not self.points:
            raise ValueError("no measured losses to simulate a search with")

    @staticmethod
    def _vector(params: Mapping) -> tuple[float, ...]:
        return (
            math.log(float(params["learning_rate"])),
            float(params["max_depth"]) / 10.0,
            math.log(float(params.get("reg_alpha", 0.05))) / 2,
            math.log(float(params.get("reg_lambda", 0.05))) / 2,
            math.log(float(params.get("min_child_weight", 1.0))) / 2,
        )

    def __call__(self, params: Mapping) -> float:
        """The loss of the measured point nearest ``params``."""
        v = self._vector(params)
        return min(self.points, key=lambda p: sum((a - b) ** 2 for a, b in zip(p[0], v)))[1]


@dataclass(frozen=True)
class Overheads:
    """Seconds a trial costs beside its training, measured on a real search.

    ``flow_s`` the flow's serial work per trial (record, suggest, submit) plus ``per_history_s``
    for each trial already in TPE's history; ``dispatch_s`` from submission to the trial running
    on its worker; ``after_s`` bookkeeping after the fit (predictions, the MLflow run), one core.
    """

    flow_s: float = 0.015
    per_history_s: float = 25e-6
    dispatch_s: float = 0.1
    after_s: float = 0.1


@dataclass
class _Trial:
    trial_id: int
    params: dict
    work: float  # one-thread seconds of training left
    ready: float  # when it starts running on its worker
    threads: int
    pool: str
    worker: str
    started: float | None = None
    fit_done: float | None = None
    finished: float | None = None
    thread_seconds: float = 0.0
    train_s: float = 0.0


class SimulatedRunner:
    """A :class:`~taxi_hpo.search.TrialRunner` on a virtual clock (see the module's docstring).

    Args:
        cost: one-thread seconds of a trial, and how threads scale.
        loss: a trial's loss from its parameters.
        pools: ``{pool: (cores, workers, slots per worker)}``.
        base: threads a trial starts with when every slot is busy.
        elastic: idle cores go to running trials (``ThreadPlan``).
        overheads: what a trial costs beside its training.
    """

    def __init__(
        self,
        cost: CostModel,
        loss,
        pools: Mapping[str, tuple[int, int, int]],
        base: int = 1,
        elastic: bool = True,
        overheads: Overheads | None = None,
        rounds: int | None = None,
    ):
        workers = {f"{pool}/w{i}": (pool, slots) for pool, (_, n, slots) in pools.items() for i in range(n)}
        self.plan = ThreadPlan(workers, {pool: cores for pool, (cores, _, _) in pools.items()}, base, elastic)
        self.cost, self.loss, self.rounds = cost, loss, rounds
        self.overheads = overheads or Overheads()
        self.now = 0.0
        self._flow_free = 0.0
        self._history = 0
        self._trials: dict[int, _Trial] = {}
        self.cores = {pool: cores for pool, (cores, _, _) in pools.items()}

    # -- the TrialRunner contract ---------------------------------------------------------------
    def submit(self, trial_id: int, params: dict, priority: float) -> int:
        """Place trial ``trial_id`` on a free slot, to start after the flow's serial work and the
        dispatch; returns the trial id as the handle. ValueError when no slot is free."""
        worker, threads = self.plan.place(trial_id, priority)
        if worker is None:
            raise ValueError("more trials in flight than slots: give in_flight <= the slots")
        o = self.overheads
        self._flow_free = max(self.now, self._flow_free) + o.flow_s + o.per_history_s * self._history
        self._history += 1
        self._trials[trial_id] = _Trial(
            trial_id,
            dict(params),
            self.cost.one_thread_s(params, self.rounds),
            self._flow_free + o.dispatch_s,
            threads,
            self.plan.pool_of(trial_id),
            worker,
        )
        return trial_id

    def wait_any(self, handles, timeout: float | None = None):
        """Apply the changed thread counts, then move the clock until some of ``handles`` have
        finished; returns those. ``timeout`` (the scheduler's, with a killing budget) is ignored:
        on the virtual clock every wait ends with a trial's end."""
        for threads in self.plan.pending_changes().values():
            for trial_id, count in threads.items():
                self._trials[trial_id].threads = count
        while True:
            done = [
                h
                for h in handles
                if self._trials[h].finished is not None and self._trials[h].finished <= self.now
            ]
            if done:
                for handle in done:  # as the real runner: cores free at once, also within a batch
                    self.plan.finish(handle)
                return done
            self._advance([self._trials[h] for h in handles])

    def outcome(self, handle: int) -> TrialOutcome:
        """The outcome of the finished trial ``handle``: its loss from the loss function, its
        virtual times and mean threads."""
        trial = self._trials.pop(handle)
        self.plan.finish(handle)
        threads_mean = trial.thread_seconds / trial.train_s if trial.train_s else float(trial.threads)
        return TrialOutcome(
            trial.trial_id,
            trial.params,
            self.loss(trial.params),
            started=trial.started,
            finished=trial.finished,
            fit_s=trial.train_s,
            worker=trial.worker,
            metrics={"threads_mean": threads_mean, "train_s": trial.train_s},
        )

    # -- the clock ------------------------------------------------------------------------------
    def _rates(self, running: list[_Trial]) -> dict[int, float]:
        threads_in = {}
        for t in running:
            threads_in[t.pool] = threads_in.get(t.pool, 0) + t.threads
        return {
            t.trial_id: self.cost.scaling.speedup(t.threads)
            * min(1.0, self.cores[t.pool] / threads_in[t.pool])
            for t in running
        }

    def _advance(self, waiting: list[_Trial]) -> None:
        """Move the clock to the next event among all trials: a start, an end of training, an end."""
        live = [t for t in self._trials.values() if t.finished is None or t.finished > self.now]
        training = [t for t in live if t.ready <= self.now and t.fit_done is None]
        rates = self._rates(training)
        events = [t.ready for t in live if t.ready > self.now]
        events += [self.now + t.work / rates[t.trial_id] for t in training]
        events += [t.finished for t in live if t.finished is not None and t.finished > self.now]
        if not events:
            raise RuntimeError("the simulation has nothing left to run")
        step = min(events) - self.now
        for t in training:
            t.work -= rates[t.trial_id] * step
            t.thread_seconds += t.threads * step
            t.train_s += step
        self.now += step
        for t in live:
            if t.ready <= self.now and t.started is None:
                t.started = t.ready
            if t.fit_done is None and t.ready <= self.now and t.work <= 1e-9:
                t.fit_done = self.now
                t.finished = self.now + self.overheads.after_s


# -- one simulated search ------------------------------------------------------------------------


@dataclass(frozen=True)
class SimLayout:
    """A cluster to simulate: ``hosts`` pools of ``cores`` each, ``workers`` one-slot workers per
    host whose trials start on ``threads`` threads; ``seq``: one trial at a time on one host's
    cores, in the flow's own process (the reference search; named ``script``: the reference
    script, which logs nothing after a fit)."""

    name: str
    hosts: int
    cores: int
    workers: int
    threads: int
    elastic: bool = True
    seq: bool = False

    @property
    def slots(self) -> int:
        """Trial slots over all hosts: ``hosts`` times ``workers``."""
        return self.hosts * self.workers


def simulate(
    cost: CostModel,
    loss,
    layout: SimLayout,
    n_trials: int,
    *,
    seed: int,
    max_depth: int,
    mode: str = "async",
    overheads: Overheads | None = None,
    rounds: int | None = None,
) -> dict:
    """Run one search on the virtual clock; its wall, utilisations and trials."""
    from taxi_hpo.search import TPESearcher, reference_space, run_search
    from taxi_hpo.search.tpe import startup_trials

    overheads = overheads or Overheads()
    if layout.seq:  # in-process: no dispatch; the whole host's cores on one trial
        overheads = Overheads(
            flow_s=overheads.flow_s,
            per_history_s=overheads.per_history_s,
            dispatch_s=0.0,
            after_s=0.0 if layout.name == "script" else overheads.after_s,
        )
        pools = {"host0": (layout.cores, 1, 1)}
        base, elastic = layout.cores, False
    else:
        pools = {f"host{i}": (layout.cores, layout.workers, 1) for i in range(layout.hosts)}
        base, elastic = layout.threads, layout.elastic
    runner = SimulatedRunner(cost, loss, pools, base, elastic, overheads, rounds)
    slots = 1 if layout.seq else layout.slots
    searcher = TPESearcher(reference_space(max_depth), seed, startup_trials(slots))
    outcomes = run_search(searcher, runner, n_trials, mode=mode, in_flight=slots)
    wall = max(o.finished for o in outcomes)
    cores = layout.cores * (1 if layout.seq else layout.hosts)
    busy = sum(o.finished - o.started for o in outcomes)
    core_s = sum(
        o.metrics["train_s"] * o.metrics["threads_mean"] + (o.finished - o.started - o.metrics["train_s"])
        for o in outcomes
    )
    return {
        "layout": layout.name,
        "wall_s": wall,
        "slots": slots,
        "cores": cores,
        "utilisation": busy / (slots * wall),
        "core_utilisation": min(core_s / (cores * wall), 1.0),
        "one_thread_s": sum(cost.one_thread_s(o.params, rounds) for o in outcomes),
        "longest_one_thread_s": max(cost.one_thread_s(o.params, rounds) for o in outcomes),
        "trials": [
            {
                "trial_id": o.trial_id,
                "started": o.started,
                "finished": o.finished,
                "fit_s": o.fit_s,
                "threads_mean": o.metrics["threads_mean"],
                "worker": o.worker,
                "loss": o.loss,
                "params": o.params,
            }
            for o in outcomes
        ],
    }
