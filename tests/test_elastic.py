"""Elastic threads for real: the switch inside an XGBoost training, and through a Dask cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from helpers import local_cluster
from taxi_hpo.core import models
from taxi_hpo.search import xgb_params

pytestmark = pytest.mark.integration  # every test fits on the real months

#: Rounds of the Dask test: enough for the long trial to outlast the short one by far.
ROUNDS = 20

POINT = {
    "max_depth": 10,
    "learning_rate": 0.05,
    "reg_alpha": 0.02,
    "reg_lambda": 0.01,
    "min_child_weight": 1.0,
    "objective": "reg:squarederror",
    "seed": 42,
}


def scripted(schedule: dict[int, int]):
    """A thread source that answers ``schedule[k]`` after round k (its first call is at the start)."""
    calls = {"n": -1}

    def source():
        calls["n"] += 1
        return schedule.get(calls["n"])

    return source


def test_a_trial_gives_the_same_model_whatever_its_thread_schedule(prepared):
    # 9 rounds: the last change (after round 8) still has a round to act on
    one = models.fit_xgboost(xgb_params(POINT, 1), prepared, rounds=9)
    two = models.fit_xgboost(xgb_params(POINT, 2), prepared, rounds=9)
    up = models.fit_xgboost(
        xgb_params(POINT, 1), prepared, rounds=9, threads=scripted({4: 2}), start_threads=1, max_threads=2
    )
    zigzag = models.fit_xgboost(
        xgb_params(POINT, 1),
        prepared,
        rounds=9,
        threads=scripted({2: 2, 5: 1, 8: 2}),
        start_threads=2,
        max_threads=2,
    )
    assert up.thread_changes == [(4, 2)]
    assert zigzag.thread_changes == [(5, 1), (8, 2)]  # round 2 asked for 2: it had 2 already
    assert one.rmse_valid == two.rmse_valid == up.rmse_valid == zigzag.rmse_valid
    assert one.rmse_train == up.rmse_train == zigzag.rmse_train
    assert (
        one.booster.get_dump(dump_format="json")
        == up.booster.get_dump(dump_format="json")
        == zigzag.booster.get_dump(dump_format="json")
    )  # the same trees
    assert 1.0 < up.threads_mean < 2.0


def test_a_thread_source_is_capped_at_the_limit_and_never_below_one(prepared):
    fit = models.fit_xgboost(
        xgb_params(POINT, 1),
        prepared,
        rounds=4,
        threads=scripted({1: 64, 2: 0, 3: -5}),
        start_threads=1,
        max_threads=2,
    )
    assert fit.thread_changes == [(1, 2), (2, 1)]


# Run in a fresh process with the nanny's pin, OMP_NUM_THREADS=1: it counts the process's OS
# threads and asks XGBoost for its thread setting after round 2 (1 thread) and round 8. One
# process, one preparation, for both modes: "plain" first, which never starts an OpenMP thread
# (what its test asserts), so "elastic" starts from the same threads as in a process of its own.
_PROBE = textwrap.dedent("""
    import json, os, sys
    import xgboost as xgb
    from taxi_hpo.core import data, features, models
    from taxi_hpo.search import xgb_params
    d = sys.argv[1]
    prepared = features.prepare_data(data.load(d + "/green_tripdata_2021-01.parquet"),
                                     data.load(d + "/green_tripdata_2021-02.parquet"))
    seen, by_mode = {}, {}

    class Probe(xgb.callback.TrainingCallback):
        def after_iteration(self, model, epoch, log):
            if epoch + 1 in (2, 8):
                nthread = json.loads(model.save_config())["learner"]["generic_param"]["nthread"]
                seen[epoch + 1] = [len(os.listdir("/proc/self/task")), int(nthread)]
            return False

    calls = {"n": -1}
    def source():  # called at the start, then after each round: 2 threads from round 4 on
        calls["n"] += 1
        return 2 if calls["n"] >= 4 else None

    orig = models.ElasticThreads.after_iteration
    for mode in sys.argv[2].split(","):
        seen = by_mode[mode] = {}
        elastic = mode == "elastic"
        params = xgb_params(json.loads(sys.argv[3]), 2 if not elastic else 1)
        if elastic:
            def probed(self, m, e, l, orig=orig):
                return (orig(self, m, e, l), Probe().after_iteration(m, e, l))[0]
            models.ElasticThreads.after_iteration = probed
            models.fit_xgboost(params, prepared, 8, threads=source, start_threads=1, max_threads=2)
        else:
            # xgb.train directly, as before elastic threads: nthread=2 asked for, under the pin.
            dtrain, dvalid = models.matrices(prepared)
            xgb.train(params, dtrain, 8, evals=[(dvalid, "v")], verbose_eval=False, callbacks=[Probe()])
    print(json.dumps(by_mode))
""")


@pytest.fixture(scope="module")
def probed(data_dir) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(data_dir), "plain,elastic", json.dumps(POINT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    by_mode = json.loads(proc.stdout.strip().splitlines()[-1])
    return {mode: {int(k): v for k, v in seen.items()} for mode, seen in by_mode.items()}


def test_the_thread_count_really_changes_under_the_nannys_pin(probed):
    seen = probed["elastic"]
    (tasks_before, nthread_before), (tasks_after, nthread_after) = seen[2], seen[8]
    assert (nthread_before, nthread_after) == (1, 2)
    assert tasks_after > tasks_before  # OpenMP started a second thread for the later rounds


def test_without_raising_the_limit_the_pin_caps_xgboost(probed):
    # Why fit_xgboost raises the OpenMP limit: asked for 2 threads, XGBoost under
    # OMP_NUM_THREADS=1 runs on one (no OpenMP thread is ever started).
    seen = probed["plain"]
    assert seen[2][0] == seen[8][0]


class TwoPoints:
    """A searcher with fixed points: trial 0 long (deep trees, slow learning), trial 1 short."""

    POINTS = {0: {**POINT, "max_depth": 14, "learning_rate": 0.02}, 1: {**POINT, "max_depth": 4}}

    def suggest(self, trial_id):
        return dict(self.POINTS[trial_id])

    def record(self, trial_id, loss):
        pass


@pytest.fixture(scope="module")
def two_workers(prefect_api_url):
    """One LocalCluster of two one-thread workers for both modes (its lifecycle is not under test)."""
    local, address = local_cluster(2, prefect_api_url)
    try:
        yield address
    finally:
        local.close()


@pytest.fixture(scope="module")
def long_alone(prepared):
    """The long trial fitted in this process on one thread all along."""
    return models.fit_xgboost(xgb_params(TwoPoints.POINTS[0], 1), prepared, rounds=ROUNDS)


@pytest.mark.parametrize("mode", ["async", "batch"])  # a batch reads its outcomes only at its end
def test_through_dask_the_long_trial_takes_the_core_the_short_one_left(
    two_workers, long_alone, prepared, workdir, tracking_uri, mode
):
    from prefect import flow
    from prefect.context import FlowRunContext
    from prefect_dask import DaskTaskRunner

    from taxi_hpo import flows, tracking
    from taxi_hpo.cluster import worker_data
    from taxi_hpo.cluster.runner import DaskTrialRunner
    from taxi_hpo.search import run_search
    from taxi_hpo.search.threads import ThreadPlan

    experiment_id = tracking.prepare_store(tracking_uri, "elastic", workdir / "mlartifacts")
    parent = tracking.start_parent_run(tracking_uri, experiment_id, {}, {})
    ctx = tracking.TrackingContext(tracking_uri, experiment_id, parent, "sha")

    @flow(task_runner=DaskTaskRunner(address=two_workers))
    def two_trials():
        client = FlowRunContext.get().task_runner.client
        workers = sorted(client.nthreads())
        # Two cores whatever this machine has: the allocation, not the hardware, is under test.
        plan = ThreadPlan({w: ("pool", 1) for w in workers}, {"pool": 2}, base=1)
        data = worker_data.share(client, prepared)  # as the flow sends it: a worker plugin
        try:
            runner = DaskTrialRunner(
                flows.trial.submit, data, ctx, rounds=ROUNDS, nthread=1, client=client, plan=plan
            )
            with client.as_current():
                outcomes = run_search(TwoPoints(), runner, 2, mode=mode, in_flight=2)
        finally:
            worker_data.unshare(client, data)
        return outcomes, runner.thread_posts

    outcomes, posts = two_trials()
    long, short = outcomes
    assert long.worker.split(":")[1] != short.worker.split(":")[1]  # placed on the two workers
    assert short.metrics["thread_changes"] == 0 and short.metrics["threads_mean"] == pytest.approx(1.0)
    # The short trial ended: its core was posted to the long one, which used it from then on.
    assert posts >= 1
    assert long.metrics["thread_changes"] >= 1 and long.metrics["threads_mean"] > 1.0
    assert long.loss == long_alone.rmse_valid  # the same model as one thread all along
