"""A trial that raises or returns NaN: retried per the task policy, then a failed result."""

from __future__ import annotations

import functools

import pytest
from prefect import flow
from prefect.context import FlowRunContext
from prefect_dask import DaskTaskRunner

from taxi_hpo import flows, tracking
from taxi_hpo.cluster import worker_data
from taxi_hpo.cluster.runner import DaskTrialRunner
from taxi_hpo.search import TPESearcher, reference_space, run_search

pytestmark = pytest.mark.integration

GOOD = {
    "max_depth": 4,
    "learning_rate": 0.5,
    "reg_alpha": 0.02,
    "reg_lambda": 0.01,
    "min_child_weight": 1.0,
    "objective": "reg:squarederror",
    "seed": 42,
}
BAD = {
    0: {**GOOD, "max_depth": -1},  # XGBoost rejects it
    1: {**GOOD, "learning_rate": 1e30},  # diverges: NaN RMSE
}


class ScriptedSearcher(TPESearcher):
    """Real TPE history, but trials 0 and 1 get parameters that fail."""

    def suggest(self, trial_id):
        params = super().suggest(trial_id)
        return BAD.get(trial_id, params)


def trial_runner(data, ctx) -> DaskTrialRunner:
    """The flow's trial runner, 3 rounds a trial, failures recorded on the parent run as the flow does."""
    return DaskTrialRunner(
        flows.trial.submit,
        data,
        ctx,
        rounds=3,
        nthread=1,
        on_failed=functools.partial(tracking.mark_trial_failed, ctx),
    )


def test_failing_trials_are_retried_then_recorded_as_failed(prefect_api_url, prepared, workdir, tracking_uri):
    experiment_id = tracking.prepare_store(tracking_uri, "failures", workdir / "mlartifacts")
    parent = tracking.start_parent_run(tracking_uri, experiment_id, {}, {"taxi_hpo.role": "search"})
    ctx = tracking.TrackingContext(tracking_uri, experiment_id, parent, "sha")
    searcher = ScriptedSearcher(reference_space(6), seed=42)

    @flow(
        task_runner=DaskTaskRunner(
            cluster_kwargs={
                "n_workers": 1,
                "threads_per_worker": 2,
                "processes": False,
                "dashboard_address": ":0",
            }
        )
    )
    def search_with_failures():
        client = FlowRunContext.get().task_runner.client
        data = worker_data.share(client, prepared)  # as the flow sends it: a worker plugin
        try:
            runner = trial_runner(data, ctx)
            with client.as_current():
                return run_search(searcher, runner, 4, mode="async", in_flight=2)
        finally:
            worker_data.unshare(client, data)

    outcomes = search_with_failures()
    assert [o.ok for o in outcomes] == [False, False, True, True]
    assert "max_depth" in outcomes[0].error or "Invalid" in outcomes[0].error
    assert "nan" in outcomes[1].error
    # TPE keeps learning from them: STATUS_FAIL, not dropped.
    statuses = {d["tid"]: d["result"]["status"] for d in searcher.trials.trials}
    assert statuses == {0: "fail", 1: "fail", 2: "ok", 3: "ok"}
    # One FAILED run per attempt (the task retries once), none left RUNNING, the failure on the parent.
    runs = tracking.child_runs(tracking_uri, parent)
    by_trial = {}
    for run in runs:
        by_trial.setdefault(run.data.tags["trial_id"], []).append(run.info.status)
    assert sorted(by_trial["0"]) == ["FAILED", "FAILED"] and sorted(by_trial["1"]) == ["FAILED", "FAILED"]
    assert by_trial["2"] == ["FINISHED"] and by_trial["3"] == ["FINISHED"]
    record = tracking.load_search(tracking_uri, parent)
    assert set(record.failed) == {0, 1} and set(record.trials) == {2, 3}
    assert record.failed[1]["params"]["learning_rate"] == 1e30


def test_a_trial_on_a_worker_without_the_data_is_placed_again_not_retried_there(
    prefect_api_url, prepared, workdir, tracking_uri
):
    """A worker that holds no copy of the data (one closing under a trial: Dask tears its
    plugins down as it closes) is no reason to fail the trial, nor to retry it there: the flow
    submits it again. The in-process worker here shares this process's copy, so the test takes
    it away before the trial and gives it back when the trial is submitted again."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    experiment_id = tracking.prepare_store(tracking_uri, "data-missing", workdir / "mlartifacts")
    parent = tracking.start_parent_run(tracking_uri, experiment_id, {}, {"taxi_hpo.role": "search"})
    ctx = tracking.TrackingContext(tracking_uri, experiment_id, parent, "sha")
    kwargs = {"n_workers": 1, "threads_per_worker": 1, "processes": False, "dashboard_address": ":0"}

    @flow(task_runner=DaskTaskRunner(cluster_kwargs=kwargs))
    def search_on_a_worker_that_lost_the_data():
        client = FlowRunContext.get().task_runner.client
        data = worker_data.share(client, prepared)
        held = worker_data._STASH.pop(data.key)  # as a closing worker's torn-down plugin
        try:
            runner = trial_runner(data, ctx)
            resubmit = runner._resubmit

            def back_then_resubmit(trial_id):  # placed again: on a worker that holds the data
                worker_data._STASH[data.key] = held
                resubmit(trial_id)

            runner._resubmit = back_then_resubmit
            with client.as_current():
                outcomes = run_search(TPESearcher(reference_space(6), seed=42), runner, 1, in_flight=1)
            return outcomes, dict(runner.resubmits), FlowRunContext.get().flow_run.id
        finally:
            worker_data.unshare(client, data)

    outcomes, resubmits, flow_run_id = search_on_a_worker_that_lost_the_data()
    assert outcomes[0].ok and resubmits == {0: 1}, outcomes
    # the attempt without data opened no run; the one placed again is the trial's one run
    statuses = [r.info.status for r in tracking.child_runs(tracking_uri, parent)]
    assert statuses == ["FINISHED"]
    assert tracking.load_search(tracking_uri, parent).failed == {}
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=["trial-0"])))
    runs = [r for r in runs if r.flow_run_id == flow_run_id]
    states = sorted((r.state.name, r.run_count) for r in runs)
    assert states == [("Completed", 1), ("Failed", 1)], states  # not retried where the data was missing
