"""Elastic threads, the pure part: how a pool's cores are shared, where trials are placed."""

from __future__ import annotations

import pytest

from taxi_hpo.search.threads import ThreadPlan, allocate


def test_every_core_goes_to_a_running_trial():
    assert allocate(2, {7: 1.0}) == {7: 2}
    assert allocate(2, {7: 1.0, 8: 1.0}) == {7: 1, 8: 1}
    assert allocate(16, {1: 1.0, 2: 1.0, 3: 1.0}) == {1: 6, 2: 5, 3: 5}
    assert sum(allocate(16, {t: 1.0 for t in range(5)}).values()) == 16


def test_the_remainder_goes_to_the_heaviest_trials_first():
    # 16 cores, 3 trials: 5 each and one spare core, for the trial with the most work left.
    assert allocate(16, {1: 1.0, 2: 9.0, 3: 4.0}) == {1: 5, 2: 6, 3: 5}
    # Equal weights: the lower trial id, so the split never depends on dict order.
    assert allocate(5, {9: 1.0, 4: 1.0}) == allocate(5, {4: 1.0, 9: 1.0}) == {4: 3, 9: 2}


def test_more_trials_than_cores_each_keep_one_thread():
    assert allocate(2, {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0}) == {1: 1, 2: 1, 3: 1, 4: 1}


def test_nothing_running_and_bad_pools():
    assert allocate(4, {}) == {}
    with pytest.raises(ValueError, match="at least one core"):
        allocate(0, {1: 1.0})


def plan_two_workers(elastic=True, base=1) -> ThreadPlan:
    return ThreadPlan({"w1": ("host", 1), "w2": ("host", 1)}, {"host": 2}, base=base, elastic=elastic)


def test_a_trial_alone_takes_the_idle_core_and_gives_it_back():
    plan = plan_two_workers()
    worker, threads = plan.place(0, weight=1.0)
    assert (worker, threads) == ("w1", 2)  # the other slot is idle: both cores
    plan.pending_changes()  # (what was sent with the submission)
    worker, threads = plan.place(1, weight=1.0)
    assert (worker, threads) == ("w2", 1)
    assert plan.pending_changes() == {"w1": {0: 1}}  # trial 0 gives its second core back
    plan.finish(1)
    assert plan.pending_changes() == {"w1": {0: 2}}  # the tail: trial 0 takes it again
    assert plan.pending_changes() == {}  # nothing new: nothing to send


def test_a_refill_before_the_send_sends_nothing():
    plan = plan_two_workers()
    plan.place(0, 1.0)
    plan.place(1, 1.0)
    plan.pending_changes()
    plan.finish(1)
    plan.place(2, 1.0)  # the slot is refilled at once
    assert plan.pending_changes() == {}  # trial 0 keeps one thread: no give-and-take-back


def test_fixed_threads_never_change():
    plan = plan_two_workers(elastic=False, base=1)
    assert plan.place(0, 1.0) == ("w1", 1)
    plan.place(1, 1.0)
    plan.finish(1)
    assert plan.pending_changes() == {}
    assert plan.allocation() == {0: 1}


def test_placement_prefers_the_pool_with_the_most_idle_cores():
    plan = ThreadPlan({"a1": ("A", 2), "b1": ("B", 1), "b2": ("B", 1)}, {"A": 4, "B": 2}, base=1)
    assert plan.place(0, 1.0)[0] == "a1"  # A: 4 idle cores
    assert plan.place(1, 1.0)[0] == "a1"  # A: 3 idle, B: 2
    assert plan.place(2, 1.0)[0] in {"b1", "b2"}
    assert plan.allocation() == {0: 2, 1: 2, 2: 2}  # each pool's cores split among its trials
    plan.place(3, 1.0)
    assert plan.place(4, 1.0) == (None, 1)  # every slot taken: Dask decides, base threads


def test_a_resubmitted_trial_is_placed_again_and_a_lost_worker_takes_no_more():
    plan = plan_two_workers()
    plan.place(0, 1.0)
    with pytest.raises(ValueError, match="already placed"):
        plan.place(0, 1.0)
    plan.remove_worker("w2")
    plan.finish(0)
    assert plan.place(0, 1.0)[0] == "w1"
    assert plan.place(1, 1.0) == (None, 1)


def test_plan_needs_a_core_count_for_every_pool():
    with pytest.raises(ValueError, match="no core count"):
        ThreadPlan({"w1": ("host", 1)}, {}, base=1)
    with pytest.raises(ValueError, match="base threads"):
        ThreadPlan({"w1": ("host", 1)}, {"host": 2}, base=0)


def test_the_base_is_a_floor_even_where_it_oversubscribes():
    # 2 slots x 2 threads asked for on 2 cores: each keeps 2 (as --no-elastic-threads would);
    # the tail trial still takes nothing more than the pool has.
    plan = ThreadPlan({"w1": ("host", 1), "w2": ("host", 1)}, {"host": 2}, base=2)
    assert plan.place(0, 1.0)[1] == 2 and plan.place(1, 1.0)[1] == 2
    plan.finish(1)
    assert plan.allocation() == {0: 2}
    wide = ThreadPlan({"w1": ("host", 1), "w2": ("host", 1)}, {"host": 8}, base=2)
    wide.place(0, 1.0)
    wide.place(1, 1.0)
    assert wide.allocation() == {0: 4, 1: 4}


def test_a_worker_that_joins_gets_trials_and_shares_its_pool():
    plan = ThreadPlan({"a": ("pool-1", 1)}, {"pool-1": 2})
    assert plan.place(0) == ("a", 2)
    assert plan.place(1) == (None, 1)  # every slot taken: Dask decides, base threads
    plan.add_worker("b", "pool-1", 1, cores=2)  # same machine: its cores are the pool's
    plan.add_worker("c", "pool-2", 1, cores=4)  # another machine
    assert plan.pool_cores == {"pool-1": 2, "pool-2": 4}
    assert plan.place(2) == ("c", 4)  # the pool with the most idle cores first
    assert plan.place(3) == ("b", 1) and plan.pending_changes() == {"a": {0: 1}}
    plan.remove_worker("c")
    plan.finish(2)
    assert plan.place(4) == (None, 1)
