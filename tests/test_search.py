"""The pure search core: ask/tell over TPE and the scheduler, on a real thread pool."""

from __future__ import annotations

import concurrent.futures as cf
import math
import random
import threading
import time

import pytest

from taxi_hpo.search import TPESearcher, TrialOutcome, reference_space, run_search


def synthetic_loss(params: dict) -> float:
    """A smooth stand-in for RMSE: best near depth 10, learning rate 0.3."""
    return (
        (math.log(params["learning_rate"]) - math.log(0.3)) ** 2 + (params["max_depth"] - 10) ** 2 / 100 + 6
    )


class PoolRunner:
    """A real TrialRunner over a thread pool, with random durations to scramble completion order."""

    def __init__(self, workers: int, jitter_s: float = 0.02, fail_ids=(), seed: int = 0):
        self.pool = cf.ThreadPoolExecutor(workers)
        self.futures: dict[int, cf.Future] = {}
        self.rng = random.Random(seed)
        self.jitter_s = jitter_s
        self.fail_ids = set(fail_ids)
        self.running = 0
        self.max_running = 0
        self.lock = threading.Lock()
        self.submit_order: list[int] = []

    def _work(self, trial_id, params, delay):
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        started = time.time()
        time.sleep(delay)
        with self.lock:
            self.running -= 1
        if trial_id in self.fail_ids:
            raise ValueError("XGBoost rejected the parameters")
        return TrialOutcome(trial_id, params, synthetic_loss(params), started, time.time())

    def submit(self, trial_id, params, priority):
        self.submit_order.append(trial_id)
        self.futures[trial_id] = self.pool.submit(
            self._work, trial_id, params, self.rng.random() * self.jitter_s
        )
        return trial_id

    def wait_any(self, handles):
        done, _ = cf.wait([self.futures[h] for h in handles], return_when=cf.FIRST_COMPLETED)
        return [h for h in handles if self.futures[h] in done]

    def outcome(self, handle):
        future = self.futures.pop(handle)
        try:
            return future.result()
        except ValueError as exc:
            return TrialOutcome(handle, {}, None, error=str(exc))


def test_suggestions_are_deterministic_and_valid():
    a, b = TPESearcher(reference_space(20), seed=42), TPESearcher(reference_space(20), seed=42)
    for tid in range(25):
        pa, pb = a.suggest(tid), b.suggest(tid)
        assert pa == pb
        assert 4 <= pa["max_depth"] <= 20 and isinstance(pa["max_depth"], int)
        assert math.exp(-3) <= pa["learning_rate"] <= 1
        a.record(tid, synthetic_loss(pa))
        b.record(tid, synthetic_loss(pb))
    assert a.best() == b.best()
    assert TPESearcher(reference_space(20), seed=7).suggest(0) != a.params(0)


def test_failed_trial_stays_in_history_as_fail():
    s = TPESearcher(reference_space(20), seed=1)
    s.suggest(0)
    s.record(0, float("nan"))
    s.suggest(1)
    s.record(1, None)
    statuses = [d["result"]["status"] for d in s.trials.trials]
    assert statuses == ["fail", "fail"]
    assert s.best() is None
    with pytest.raises(ValueError):
        s.suggest(1)


def test_tpe_learns_after_startup():
    """After its random start-up, TPE's suggestions are better than random search's, seed by seed
    (random search: the same searcher that never leaves its start-up)."""
    import statistics

    for seed in (3, 4, 5):
        medians = []
        for startup in (10, 1000):
            s = TPESearcher(reference_space(40), seed=seed, n_startup_jobs=startup)
            losses = []
            for tid in range(40):
                losses.append(synthetic_loss(s.suggest(tid)))
                s.record(tid, losses[-1])
            medians.append(statistics.median(losses[20:]) - 6.0)  # above the function's minimum
        tpe_median, random_median = medians
        assert tpe_median < 0.75 * random_median, (seed, medians)  # measured 0.31, 0.67, 0.41


def test_async_keeps_every_slot_busy():
    runner = PoolRunner(workers=3, jitter_s=0.05)
    searcher = TPESearcher(reference_space(20), seed=42, n_startup_jobs=20)
    outcomes = run_search(searcher, runner, 15, mode="async", in_flight=3)
    assert [o.trial_id for o in outcomes] == list(range(15))
    assert runner.max_running == 3
    assert all(d["state"] == 2 for d in searcher.trials.trials)  # JOB_STATE_DONE


def test_batch_mode_is_reproducible_whatever_the_workers_and_timing():
    runs = []
    for workers, seed in ((1, 0), (4, 1), (2, 2)):
        runner = PoolRunner(workers=workers, jitter_s=0.03, seed=seed)
        searcher = TPESearcher(reference_space(20), seed=42, n_startup_jobs=4)
        outcomes = run_search(searcher, runner, 12, mode="batch", in_flight=4)
        runs.append([o.params for o in outcomes])
    assert runs[0] == runs[1] == runs[2]


def test_batch_starts_heaviest_first():
    runner = PoolRunner(workers=1, jitter_s=0.0)
    searcher = TPESearcher(reference_space(60), seed=5, n_startup_jobs=8)
    run_search(searcher, runner, 8, mode="batch", in_flight=8)
    from taxi_hpo.search.space import predicted_cost

    costs = [predicted_cost(searcher.params(t)) for t in runner.submit_order]
    assert costs == sorted(costs, reverse=True)


def test_failed_trials_are_results_and_the_search_goes_on():
    runner = PoolRunner(workers=2, fail_ids={1, 4})
    searcher = TPESearcher(reference_space(20), seed=42)
    seen = []
    outcomes = run_search(searcher, runner, 6, mode="async", in_flight=2, on_outcome=seen.append)
    assert [o.ok for o in outcomes] == [True, False, True, True, False, True]
    assert len(seen) == 6
    assert [d["result"]["status"] for d in sorted(searcher.trials.trials, key=lambda d: d["tid"])][
        1
    ] == "fail"


def test_pending_trials_act_as_liars():
    """Trials in flight are in TPE's history: the same draw (same seed) gives another point with
    them than without them, and concurrent suggestions do not repeat each other."""
    import copy

    from hyperopt import Trials, tpe

    s = TPESearcher(reference_space(30), seed=11, n_startup_jobs=5)
    for tid in range(10):
        s.record(tid, synthetic_loss(s.suggest(tid)))
    pending = [s.suggest(tid) for tid in range(10, 14)]
    assert len({tuple(sorted(p.items())) for p in pending}) == 4
    done_only = Trials()
    done_only.insert_trial_docs([copy.deepcopy(d) for d in s.trials.trials if d["tid"] < 10])
    done_only.refresh()
    changed = 0
    for draw in range(5):
        with_pending = tpe.suggest([14], s._domain, s.trials, draw, n_startup_jobs=5)[0]["misc"]["vals"]
        without = tpe.suggest([14], s._domain, done_only, draw, n_startup_jobs=5)[0]["misc"]["vals"]
        changed += with_pending != without
    assert changed >= 4


def test_batch_resume_suggests_what_an_uninterrupted_search_would():
    full = run_search(
        TPESearcher(reference_space(20), seed=42, n_startup_jobs=4),
        PoolRunner(3),
        12,
        mode="batch",
        in_flight=4,
    )
    # Killed in the middle of the second batch: trials 0-5 are in the store, 6-11 are not.
    known = {o.trial_id: o for o in full[:6]}
    runner = PoolRunner(2)
    resumed = run_search(
        TPESearcher(reference_space(20), seed=42, n_startup_jobs=4),
        runner,
        12,
        mode="batch",
        in_flight=4,
        known=known,
    )
    assert [o.params for o in resumed] == [o.params for o in full]
    assert sorted(runner.submit_order) == list(range(6, 12))  # only the missing ones ran


def test_async_resume_runs_only_missing_trials_and_keeps_history():
    first = run_search(TPESearcher(reference_space(20), seed=42), PoolRunner(2), 5, mode="async", in_flight=2)
    known = {o.trial_id: o for o in first if o.trial_id != 3}
    runner = PoolRunner(2)
    searcher = TPESearcher(reference_space(20), seed=42)
    resumed = run_search(searcher, runner, 8, mode="async", in_flight=2, known=known)
    assert sorted(runner.submit_order) == [3, 5, 6, 7]
    assert [o.trial_id for o in resumed] == list(range(8))
    for tid, outcome in known.items():
        assert searcher.params(tid) == outcome.params


class ClockRunner:
    """Trials take ``cost(params)`` seconds on a manual clock; ``stop`` cancels what runs."""

    def __init__(self, cost):
        self.now, self.cost = 0.0, cost
        self.running: dict[int, tuple[float, dict]] = {}  # trial -> (end, params)
        self.started: dict[int, float] = {}
        self.stopped: list[int] = []
        self.cancelled: set[int] = set()

    def submit(self, trial_id, params, priority):
        self.started[trial_id] = self.now
        self.running[trial_id] = (self.now + self.cost(params), params)
        return trial_id

    def wait_any(self, handles, timeout=None):
        end = min(self.running[h][0] for h in handles)
        if timeout is not None and self.now + timeout < end:
            self.now += timeout
            return []
        self.now = end
        return [h for h in handles if self.running[h][0] <= self.now]

    def stop(self, handles):
        self.stopped += list(handles)
        for h in handles:  # each stops "at its next round": here, at once
            self.running[h] = (self.now, self.running[h][1])
            self.cancelled.add(h)

    def outcome(self, handle):
        end, params = self.running.pop(handle)
        if handle in self.cancelled:
            return TrialOutcome(
                handle, params, None, self.started[handle], end, cancelled=True, error="stopped"
            )
        return TrialOutcome(handle, params, synthetic_loss(params), self.started[handle], end)


def test_no_trial_starts_after_the_budget_and_running_ones_finish():
    from taxi_hpo.search.scheduler import Budget

    runner = ClockRunner(lambda p: 10.0)
    budget = Budget(deadline=25.0, clock=lambda: runner.now)
    outcomes = run_search(TPESearcher(reference_space(20), seed=1), runner, 20, in_flight=2, budget=budget)
    # 0 s: trials 0, 1; 10 s: 2, 3; 20 s: 4, 5; 30 s: over, nothing more starts; 4 and 5 finish.
    assert [o.trial_id for o in outcomes] == [0, 1, 2, 3, 4, 5] and all(o.ok for o in outcomes)
    assert max(runner.started.values()) <= 25.0 and runner.now == 30.0 and runner.stopped == []


def test_a_batch_does_not_start_after_the_budget():
    from taxi_hpo.search.scheduler import Budget

    runner = ClockRunner(lambda p: 10.0)
    outcomes = run_search(
        TPESearcher(reference_space(20), seed=1),
        runner,
        20,
        mode="batch",
        in_flight=3,
        budget=Budget(deadline=15.0, clock=lambda: runner.now),
    )
    assert [o.trial_id for o in outcomes] == [0, 1, 2, 3, 4, 5]  # batches at 0 s and 10 s


def test_a_killing_budget_stops_the_running_trials_at_the_deadline():
    from taxi_hpo.search.scheduler import Budget

    runner = ClockRunner(lambda p: 100.0 if p["max_depth"] > 10 else 4.0)
    budget = Budget(deadline=9.0, kill=True, clock=lambda: runner.now)
    outcomes = run_search(TPESearcher(reference_space(20), seed=3), runner, 20, in_flight=2, budget=budget)
    cancelled = [o for o in outcomes if o.cancelled]
    assert cancelled and runner.now == 9.0 and sorted(runner.stopped) == sorted(o.trial_id for o in cancelled)
    assert all(not o.ok for o in cancelled) and max(runner.started.values()) <= 9.0


def test_without_a_deadline_a_budget_changes_nothing():
    from taxi_hpo.search.scheduler import Budget

    runner = ClockRunner(lambda p: 1.0)
    outcomes = run_search(
        TPESearcher(reference_space(20), seed=1),
        runner,
        6,
        in_flight=2,
        budget=Budget.from_now(None, clock=lambda: runner.now),
    )
    assert len(outcomes) == 6 and not Budget().over() and Budget().left() is None


def test_warm_points_come_first_then_tpe_learns_from_them():
    space = reference_space(20)
    warm = [
        {
            "max_depth": 7,
            "learning_rate": 0.2,
            "reg_alpha": 0.02,
            "reg_lambda": 0.01,
            "min_child_weight": 1.5,
        },
        {
            "max_depth": 12,
            "learning_rate": 0.05,
            "reg_alpha": 0.1,
            "reg_lambda": 0.2,
            "min_child_weight": 3.0,
        },
    ]
    searcher = TPESearcher(space, seed=4, n_startup_jobs=3, warm_points=warm)
    first = [searcher.suggest(i) for i in range(2)]
    for got, want in zip(first, warm):
        assert {k: got[k] for k in want} == pytest.approx(want)
        assert got["objective"] == "reg:squarederror" and got["seed"] == 42  # the space's constants
    searcher.record(0, 6.1)
    searcher.record(1, 6.9)
    third = searcher.suggest(2)
    assert third not in first and searcher.best() == (0, 6.1)
    # the same seed and warm points suggest the same search, resumed or not
    again = TPESearcher(space, seed=4, n_startup_jobs=3, warm_points=warm)
    again.add_finished(0, first[0], 6.1)
    again.add_finished(1, first[1], 6.9)
    assert again.suggest(2) == third


def test_a_warm_start_replaces_the_random_start_up():
    from taxi_hpo.search.tpe import DEFAULT_STARTUP, startup_trials

    assert (
        startup_trials(2) == DEFAULT_STARTUP and startup_trials(32) == 32
    )  # cold: hyperopt's 20, or the slots
    assert startup_trials(2, n_warm=5) == 5 and startup_trials(8, n_warm=5) == 8
    assert startup_trials(2, n_warm=5, random_after_warm=3) == 8
    # Right after the warm points TPE models them: what it suggests next depends on how they did.
    # Counted toward hyperopt's 20 random trials instead, the next ones ignore their losses.
    space = reference_space(40)
    warm = [
        {"max_depth": d, "learning_rate": lr, "reg_alpha": 0.02, "reg_lambda": 0.01, "min_child_weight": 2.0}
        for d, lr in ((36, 0.5), (30, 0.3), (12, 0.05), (8, 0.02), (6, 0.9))
    ]

    def next_points(startup: int, losses: list[float]) -> list[dict]:
        searcher = TPESearcher(space, seed=3, n_startup_jobs=startup, warm_points=warm)
        for i, loss in enumerate(losses):
            searcher.suggest(i)
            searcher.record(i, loss)
        return [searcher.suggest(i) for i in range(len(warm), len(warm) + 2)]

    one, other = [6.4, 6.5, 7.0, 7.5, 8.0], [8.0, 7.5, 7.0, 6.5, 6.4]
    rule = startup_trials(1, len(warm))
    assert next_points(rule, one) != next_points(rule, other)
    assert next_points(DEFAULT_STARTUP, one) == next_points(DEFAULT_STARTUP, other)


class PollingRunner(PoolRunner):
    """A PoolRunner that can give up waiting (as the Dask runner does when it polls)."""

    def wait_any(self, handles, timeout=None):
        done, _ = cf.wait([self.futures[h] for h in handles], timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return [h for h in handles if self.futures[h] in done]


def test_slots_that_appear_are_filled_without_waiting_for_a_trial_to_end():
    """Two slots appear (workers joined) while trial 0 runs: trials start on them at once. Trial
    0 is held until three trials have started, so the test waits on that event, not on a clock."""
    runner = PollingRunner(workers=4, jitter_s=0.0)
    started, lock, three_started = [], threading.Lock(), threading.Event()

    def work(trial_id, params, delay, original=runner._work):
        with lock:
            started.append(trial_id)
            if len(started) >= 3:
                three_started.set()
        if trial_id == 0:
            assert three_started.wait(timeout=60), "no trial started on the new slots while trial 0 ran"
        return original(trial_id, params, 0.0)

    runner._work = work
    capacity = lambda: 3 if runner.submit_order else 1  # noqa: E731 - two workers joined after trial 0

    searcher = TPESearcher(reference_space(20), seed=1, n_startup_jobs=20)
    outcomes = run_search(searcher, runner, 6, mode="async", in_flight=capacity, poll_s=0.05)
    assert [o.trial_id for o in outcomes] == list(range(6)) and all(o.ok for o in outcomes)
    assert started[0] == 0 and {1, 2} <= set(started[:3])  # started while trial 0 was held


def test_slots_that_go_are_not_refilled_and_one_trial_always_runs():
    runner = PollingRunner(workers=4, jitter_s=0.02)
    finished, in_flight_at_submit = [], []
    runner.outcome = lambda handle, out=runner.outcome: finished.append(handle) or out(handle)

    def submit(trial_id, params, priority, sub=runner.submit):
        in_flight_at_submit.append((len(finished), len(runner.submit_order) + 1 - len(finished)))
        return sub(trial_id, params, priority)

    runner.submit = submit
    capacity = lambda: 3 if len(finished) < 3 else 0  # noqa: E731 - every worker left after 3 trials
    searcher = TPESearcher(reference_space(20), seed=2, n_startup_jobs=20)
    outcomes = run_search(searcher, runner, 9, mode="async", in_flight=capacity, poll_s=0.05)
    assert [o.trial_id for o in outcomes] == list(range(9))  # none lost
    assert max(n for done, n in in_flight_at_submit if done < 3) == 3
    assert max(n for done, n in in_flight_at_submit if done >= 5) == 1  # the slots went: one at a time


def test_a_batch_keeps_a_fixed_size():
    with pytest.raises(ValueError):
        run_search(
            TPESearcher(reference_space(20), seed=1), PoolRunner(1), 2, mode="batch", in_flight=lambda: 2
        )


def test_a_depth_range_of_one_depth_is_searched_at_that_depth():
    """``--max-depth 4`` (the space's lower bound, which the error for 3 asks for) is a search at
    depth 4, random start-up and TPE alike (hyperopt refuses a range with low == high)."""
    runner = PoolRunner(workers=2)
    searcher = TPESearcher(reference_space(4), seed=3, n_startup_jobs=3)
    outcomes = run_search(searcher, runner, 8, mode="async", in_flight=2)
    assert [o.params["max_depth"] for o in outcomes] == [4] * 8
