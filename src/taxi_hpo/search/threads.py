"""Elastic threads: how the cores of a host are shared among the trials running on it (pure).

A *core pool* is a set of cores that worker processes share: one machine, or one container's
CPU quota. Every core of a pool goes to some trial running there: when fewer trials than cores
run (the search's tail, a slot waiting for its next suggestion, a failed trial), the running
trials take the idle cores; when a new trial starts, they give them back. XGBoost applies a
new thread count between two boosting rounds, and a trial's result does not depend on it.

The flow process decides (:class:`ThreadPlan`, which also chooses where each trial runs);
workers only read what was decided for their trial.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


def allocate(cores: int, weights: Mapping[int, float], minimum: int = 1) -> dict[int, int]:
    """Threads for each trial running on a pool of ``cores`` cores.

    Args:
        cores: the pool's cores.
        weights: ``{trial_id: weight}`` of the trials running there; a heavier trial (more
            work left) gets a core of the remainder first, then the lower trial id.
        minimum: threads a trial gets even when trials outnumber the cores.

    Returns:
        ``{trial_id: threads}``: the cores split evenly, the remainder one each to the heaviest;
        the sum is ``cores`` whenever trials do not outnumber the cores.
    """
    if cores < 1:
        raise ValueError(f"a pool has at least one core, got {cores}")
    if not weights:
        return {}
    order = sorted(weights, key=lambda t: (-weights[t], t))
    share, extra = divmod(cores, len(order))
    return {t: max(minimum, share + (1 if rank < extra else 0)) for rank, t in enumerate(order)}


@dataclass
class Slot:
    """A place a trial can run: a Dask worker, its slot count and the pool its cores belong to."""

    worker: str
    pool: str
    slots: int = 1
    running: set = field(default_factory=set)

    @property
    def free(self) -> int:
        """Slots not taken by a running trial (negative for a worker that left while its trials
        still run)."""
        return self.slots - len(self.running)


class ThreadPlan:
    """Where each trial runs and how many threads it uses; decided in the flow process.

    Called by the trial runner: :meth:`place` when a trial is submitted, :meth:`finish` when it
    ends, :meth:`pending_changes` before the runner waits (the new counts of trials already
    running, to send to their workers). With ``elastic`` False every trial keeps ``base``.

    Args:
        workers: ``{worker address: (pool id, slots)}``.
        pool_cores: ``{pool id: cores}``.
        base: threads a trial gets when every slot of its pool is busy (``--threads-per-worker``).
        elastic: whether idle cores go to the running trials.
    """

    def __init__(
        self,
        workers: Mapping[str, tuple[str, int]],
        pool_cores: Mapping[str, int],
        base: int = 1,
        elastic: bool = True,
    ):
        if base < 1:
            raise ValueError(f"base threads must be >= 1, got {base}")
        missing = sorted({pool for pool, _ in workers.values()} - set(pool_cores))
        if missing:
            raise ValueError(f"no core count for pools {missing}")
        self.base, self.elastic = base, elastic
        self.pool_cores = dict(pool_cores)
        self.slots = {w: Slot(w, pool, max(int(n), 0)) for w, (pool, n) in workers.items()}
        self._where: dict[int, str] = {}
        self._weight: dict[int, float] = {}
        self._sent: dict[int, int] = {}

    # -- placement ----------------------------------------------------------------------------
    def place(self, trial_id: int, weight: float = 0.0) -> tuple[str | None, int]:
        """A trial is about to be submitted: (worker to run it on, its starting threads).

        The worker is one with a free slot in the pool with the most idle cores (then the most
        free slots, then the address); None when every slot is taken (the caller lets Dask
        choose, and the trial keeps ``base`` threads).
        """
        if trial_id in self._where:
            raise ValueError(f"trial {trial_id} is already placed")
        free = [s for s in self.slots.values() if s.free > 0]
        if not free:
            return None, self.base
        best = min(free, key=lambda s: (-self._idle_cores(s.pool), -s.free, s.worker))
        best.running.add(trial_id)
        self._where[trial_id] = best.worker
        self._weight[trial_id] = weight
        threads = self.threads(best.pool).get(trial_id, self.base)
        self._sent[trial_id] = threads
        return best.worker, threads

    def finish(self, trial_id: int) -> None:
        """A trial ended (done, failed or given up): its cores go back to its pool."""
        worker = self._where.pop(trial_id, None)
        self._weight.pop(trial_id, None)
        self._sent.pop(trial_id, None)
        if worker is not None:
            self.slots[worker].running.discard(trial_id)

    def add_worker(self, worker: str, pool: str, slots: int, cores: int) -> None:
        """A worker joined (or came back): its slots take trials from now on. A pool already
        known keeps its core count (its workers share those cores)."""
        self.pool_cores.setdefault(pool, max(int(cores), 1))
        slot = self.slots.get(worker)
        if slot is None or slot.pool != pool:
            self.slots[worker] = Slot(worker, pool, max(int(slots), 0), slot.running if slot else set())
        else:
            slot.slots = max(int(slots), 0)

    def remove_worker(self, worker: str) -> None:
        """A worker left: its slots are gone (its trials stay placed until they finish)."""
        slot = self.slots.get(worker)
        if slot is not None:
            slot.slots = 0

    # -- threads ------------------------------------------------------------------------------
    def threads(self, pool: str) -> dict[int, int]:
        """``{trial_id: threads}`` for the trials running in ``pool`` now."""
        weights = {t: self._weight[t] for s in self.slots.values() if s.pool == pool for t in s.running}
        if not self.elastic:
            return {t: self.base for t in weights}
        # The base is a floor: a pool given more slots x base than it has cores stays as asked.
        return allocate(self.pool_cores[pool], weights, minimum=self.base)

    def allocation(self) -> dict[int, int]:
        """Threads of every running trial."""
        out: dict[int, int] = {}
        for pool in {s.pool for s in self.slots.values()}:
            out.update(self.threads(pool))
        return out

    def pending_changes(self) -> dict[str, dict[int, int]]:
        """``{worker: {trial_id: threads}}`` for running trials whose count changed since it was
        last sent, and marks them sent."""
        changed: dict[str, dict[int, int]] = {}
        for trial_id, threads in self.allocation().items():
            if self._sent.get(trial_id) != threads:
                self._sent[trial_id] = threads
                changed.setdefault(self._where[trial_id], {})[trial_id] = threads
        return changed

    def worker_of(self, trial_id: int) -> str | None:
        """The worker trial ``trial_id`` was placed on, or None (not placed, or finished)."""
        return self._where.get(trial_id)

    def pool_of(self, trial_id: int) -> str | None:
        """The core pool of the worker trial ``trial_id`` was placed on, or None."""
        worker = self._where.get(trial_id)
        return self.slots[worker].pool if worker is not None else None

    def _idle_cores(self, pool: str) -> int:
        busy = sum(len(s.running) for s in self.slots.values() if s.pool == pool)
        return self.pool_cores[pool] - busy * self.base
