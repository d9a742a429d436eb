"""The main path end to end: real Prefect API, real LocalCluster, real MLflow sqlite store.

The first search starts its own LocalCluster (what `taxi-hpo run` does, and what is checked
about it: the layout line, the nanny's OMP_NUM_THREADS put back); the searches that test the
search's own behaviour (batches, pruning, budgets, warm starts) run on two LocalClusters the
module starts once (one and two workers), passed as ``--address``. No report is drawn where the
report is not the subject (tests/test_report.py is about it).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from collections import defaultdict

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from helpers import free_port, local_cluster, run_here
from taxi_hpo import cli, report, tracking

SMALL = ["--rounds", "10", "--max-depth", "10", "--no-report"]


@pytest.fixture(scope="module")
def one_worker(prefect_api_url):
    """``--address`` of a LocalCluster of one worker, shared by the module's searches."""
    start, address = local_cluster(1, prefect_api_url)
    yield ["--address", address]
    start.close()


@pytest.fixture(scope="module")
def two_workers(prefect_api_url):
    """``--address`` of a LocalCluster of two workers, shared by the module's searches."""
    start, address = local_cluster(2, prefect_api_url)
    yield ["--address", address]
    start.close()


@pytest.fixture(scope="module")
def first_search(prefect_api_url, data_dir, tmp_path_factory):
    """`taxi-hpo run` on its own LocalCluster in a fresh folder (default store there), with a
    registered model: the search that both the end-to-end checks and the REST test read."""
    workdir = tmp_path_factory.mktemp("first-search")
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        mp.delenv("OMP_NUM_THREADS", raising=False)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(
                [
                    "run",
                    "--data-dir",
                    str(data_dir),
                    "--trials",
                    "6",
                    "--workers",
                    "2",
                    *SMALL,
                    "--max-rmse",
                    "10",
                    "--json",
                ]
            )
        omp_left = os.environ.get("OMP_NUM_THREADS")
    assert code == 0, err.getvalue()[-3000:]
    summary = json.loads(out.getvalue().strip().splitlines()[-1])
    return {**summary, "stderr": err.getvalue(), "workdir": workdir, "omp_left": omp_left}


@pytest.mark.integration
def test_search_end_to_end(first_search, data_dir):
    s, workdir = first_search, first_search["workdir"]
    assert s["lr_rmse"] == pytest.approx(7.7587, abs=1e-4)
    assert (s["trials_done"], s["trials_failed"]) == (6, 0)
    assert len(s["trial_params"]) == 6 and s["best_rmse"] == min(s["trial_rmse"])
    assert s["best_params"] == s["trial_params"][s["trial_rmse"].index(s["best_rmse"])]
    # Each trial's entry: when it started and ended, its fit and training seconds, where it ran.
    for t in s["trials"]:
        assert (
            t["started"] < t["finished"] and 0 < t["train_s"] <= t["fit_s"] <= t["finished"] - t["started"]
        ), t
        assert (
            t["worker"]
            and t["run_id"]
            and t["complete"]
            and t["pruned_at"] is None
            and t["threads_mean"] >= 1
        )
    assert s["preprocessor_artifacts"] == 1
    assert s["registered_version"] == "1"
    assert 0 < s["utilisation"] <= 1 and s["search_wall_s"] <= s["wall_s"]
    assert s["tracking_uri"] == f"sqlite:///{workdir / 'mlflow.db'}"
    said = " ".join(s["stderr"].split())  # the console wraps long lines
    assert (
        "Dask: 2 workers x 1 XGBoost thread, 2 trials at a time (local cluster); elastic threads: a trial "
        "takes idle cores, up to" in said
    )
    # A quiet terminal: no MLflow progress bars or registry chatter around the run's own summary.
    assert "Downloading artifacts" not in s["stderr"] and "Successfully registered" not in s["stderr"]
    # The nanny writes OMP_NUM_THREADS into the process that starts it; it must not stay there
    # (it would cap XGBoost in this process, e.g. the benchmark's sequential baseline).
    assert s["omp_left"] is None
    assert s["report"] is None  # --no-report: nothing drawn
    # Where the command's time went: its steps, in the order a search takes them, from its start.
    steps = s["timeline"]
    order = [
        "checks_done",
        "flow_started",
        "data_prepared",
        "cluster_connected",
        "workers_warm",
        "first_trial_started",
        "last_trial_ended",
        "workers_flushed",
        "registered",
        "closed",
    ]
    assert [step for step in steps if step in order] == order, steps
    assert steps["cluster_ready"] < steps["cluster_connected"]
    assert "prefect_api_ready" not in steps  # the session's API was given (PREFECT_API_URL): none started
    assert steps["baseline_done"] < steps["first_trial_started"] and steps["closed"] >= s["wall_s"]

    # Sharing: each worker built its XGBoost matrices once; no trial shipped the data itself.
    builds = defaultdict(list)
    for outcome in s["trials"]:
        builds[outcome["worker"]].append(outcome["matrix_builds"])
    assert len(builds) == 2 and all(max(b) == 1 for b in builds.values())
    assert sum(len(b) for b in builds.values()) == 6
    client = MlflowClient(s["tracking_uri"])
    runs = client.search_runs([s["experiment_id"]])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == s["parent_run_id"]]
    assert [p.info.run_id for p in parents] == [s["parent_run_id"]]
    assert len(children) == 7 and all(r.info.status == "FINISHED" for r in runs)
    parent = client.get_run(s["parent_run_id"])
    assert parent.data.params["trials"] == "6" and parent.data.params["train_sha256"]
    sha = parent.data.tags[tracking.PREPROCESSOR_TAG]
    trial_runs = [r for r in children if tracking.TRIAL_TAG in r.data.tags]
    assert len(trial_runs) == 6
    for run in trial_runs:
        assert {
            "rmse_train",
            "rmse_valid",
            "inference_time",
            "best_iteration",
            "trial_wall_s",
            "threads_mean",
            "thread_changes",
            "train_s",
        } <= set(run.data.metrics)
        assert {"max_depth", "learning_rate", "reg_alpha", "reg_lambda", "min_child_weight"} <= set(
            run.data.params
        )
        assert run.data.tags[tracking.PREPROCESSOR_TAG] == sha
        assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/booster.ubj"]
    assert s["submit_bytes_max"] < s["data_bytes"] / 100

    # Each trial's line reached the Prefect API from its worker, under the search's flow run.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as api:
        logs = api.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[parent.data.tags["flow_run_id"]]))
        )
    trial_lines = [
        log.message for log in logs if log.message.startswith("trial ") and "rmse_valid" in log.message
    ]
    assert len(trial_lines) == 6, [log.message for log in logs]

    # The registered pyfunc predicts minutes from raw TLC rows (2023 layout: int ids).
    mlflow.set_tracking_uri(s["tracking_uri"])
    model = mlflow.pyfunc.load_model("models:/nyc-taxi-duration@staging")
    raw = pd.read_parquet(data_dir / "green_tripdata_2023-03.parquet").head(200)
    pred = model.predict(raw)
    assert len(pred) == 200 and 0 < float(pd.Series(pred).median()) < 60


@pytest.mark.integration
def test_the_registered_model_serves_raw_rows_over_rest(first_search, data_dir):
    """`make serve-model` (``mlflow models serve`` of ``models:/nyc-taxi-duration@staging``)
    answers a REST request carrying raw TLC rows with the minutes the model predicts (the model
    the first search registered)."""
    import signal
    import subprocess
    import sys
    import urllib.error
    import urllib.request
    from pathlib import Path

    from helpers import wait_for

    s = first_search
    assert s["registered_version"] == "1"
    port = free_port()
    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    server = subprocess.Popen(
        [
            "make",
            "-s",
            "-C",
            str(repo),
            "serve-model",
            f"VENV={sys.prefix}",
            f"MLFLOW_TRACKING_URI={s['tracking_uri']}",
            f"PORT={port}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def answers() -> bool:
        assert server.poll() is None, server.stdout.read().decode()[-2000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        wait_for(answers, 180, "the model server's /ping", interval=0.5)
        raw = pd.read_parquet(data_dir / "green_tripdata_2023-03.parquet").head(5)
        body = json.dumps({"dataframe_split": json.loads(raw.to_json(orient="split", date_format="iso"))})
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as r:
            minutes = json.loads(r.read())["predictions"]
        mlflow.set_tracking_uri(s["tracking_uri"])
        local = mlflow.pyfunc.load_model("models:/nyc-taxi-duration@staging").predict(raw)
        assert minutes == pytest.approx([float(x) for x in local], rel=1e-5)
        assert len(minutes) == 5 and all(0 < m < 120 for m in minutes)
        # the model states its interface: a row without a column it reads is told which
        without = raw.drop(columns=["DOLocationID"])
        body = json.dumps({"dataframe_split": json.loads(without.to_json(orient="split", date_format="iso"))})
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=60)
        answer = json.loads(refused.value.read())
        assert refused.value.code == 400 and "missing inputs ['DOLocationID']" in answer["message"], answer
        assert "Traceback" not in answer["message"] and "KeyError" not in answer["message"], answer
        info = mlflow.models.get_model_info("models:/nyc-taxi-duration@staging")
        assert [c["name"] for c in info.signature.inputs.to_dict()] == [
            "PULocationID",
            "DOLocationID",
            "trip_distance",
        ]
        assert info.saved_input_example_info is not None
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.mark.integration
def test_batch_mode_is_reproducible_preprocessing_reused_and_registering_needs_a_qualifying_trial(
    prefect_api_url, data_dir, workdir, capsys, one_worker, two_workers
):
    common = ["--data-dir", str(data_dir), "--trials", "4", "--mode", "batch", "--batch-size", "2", *SMALL]
    one = run_here(capsys, *common, *one_worker, "--no-register")
    # registering on: no trial is below an RMSE of 1.0, so nothing qualifies
    two = run_here(capsys, *common, *two_workers, "--max-rmse", "1.0")
    assert (one["slots"], two["slots"]) == (1, 2)
    assert one["trial_params"] == two["trial_params"]
    # One worker gives each trial both cores, two share them (elastic threads): the models, and
    # so the RMSEs, are the same to the last bit.
    assert one["trial_rmse"] == two["trial_rmse"]
    assert {t["threads_mean"] for t in one["trials"]} != {1.0}
    assert two["preprocess_cached"] is True
    # ... and so is the baseline's fit: the second search logs the same RMSE from the cache
    baselines = MlflowClient(two["tracking_uri"]).search_runs(
        [two["experiment_id"]], "attributes.run_name = 'linear-regression'"
    )
    by_parent = {r.data.tags["mlflow.parentRunId"]: r for r in baselines}
    assert by_parent[two["parent_run_id"]].data.tags["cached"] == "true"
    assert (
        round(by_parent[two["parent_run_id"]].data.metrics["rmse_valid"], 4)
        == two["lr_rmse"]
        == one["lr_rmse"]
    )
    assert one["registered_version"] is None and two["registered_version"] is None
    assert MlflowClient(two["tracking_uri"]).search_registered_models() == []


def test_preprocessor_guard_under_retries_and_threads(workdir, tracking_uri):
    from concurrent.futures import ThreadPoolExecutor

    experiment_id = tracking.prepare_store(tracking_uri, "guard", workdir / "mlartifacts")
    parent = tracking.start_parent_run(tracking_uri, experiment_id, {}, {})
    ctx = tracking.TrackingContext(tracking_uri, experiment_id, parent, "abc123")
    assert tracking.log_preprocessor_once(ctx, b"blob") is True
    assert tracking.log_preprocessor_once(ctx, b"blob") is False  # a retry logs nothing
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: tracking.log_preprocessor_once(ctx, b"blob"), range(8)))
    child = tracking.start_child_run(ctx, "trial-0000", {tracking.TRIAL_TAG: "0"})
    tracking.finish_child_run(ctx, child, {}, {"rmse_valid": 1.0})
    assert tracking.count_preprocessor_artifacts(tracking_uri, parent) == 1


@pytest.mark.integration
def test_pruning_is_reproducible_in_batch_mode_and_never_registers_a_pruned_trial(
    prefect_api_url, data_dir, workdir, capsys, one_worker, two_workers
):
    # 18 rounds: checkpoints at rounds 2 and 6; batches of 3, so from the second batch on every
    # trial is judged against the earlier ones (ASHA: the best third at each checkpoint goes on).
    common = [
        "--data-dir",
        str(data_dir),
        "--trials",
        "9",
        "--mode",
        "batch",
        "--batch-size",
        "3",
        "--rounds",
        "18",
        "--max-depth",
        "10",
        "--prune",
        "asha",
        "--max-rmse",
        "100",
        "--no-report",
    ]
    one = run_here(capsys, *common, *one_worker, "--no-register")
    two = run_here(capsys, *common, *two_workers)
    assert one["trial_params"] == two["trial_params"] and one["trial_rmse"] == two["trial_rmse"]
    pruned = [t for t in two["trials"] if t["pruned_at"] is not None]
    assert [t["pruned_at"] for t in one["trials"]] == [t["pruned_at"] for t in two["trials"]]
    assert pruned and all(t["trial_id"] >= 3 for t in pruned)  # the first batch has no peers yet
    assert two["trials_pruned"] == len(pruned) and two["trials_done"] == 9 and two["prune"] == "asha"
    # a pruned trial: a FINISHED child run, tagged with the round it stopped at, its curve kept
    client = MlflowClient(two["tracking_uri"])
    run = client.get_run(pruned[0]["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags[tracking.PRUNED_TAG] == str(pruned[0]["pruned_at"])
    assert str(pruned[0]["pruned_at"]) in json.loads(run.data.tags[tracking.CURVE_TAG])
    assert run.data.metrics["rmse_valid"] == pytest.approx(pruned[0]["loss"])
    # the best and the registered model come from trials that ran all their rounds
    complete = [t for t in two["trials"] if t["pruned_at"] is None]
    assert two["best_rmse"] == min(t["loss"] for t in complete)
    registered = client.get_model_version_by_alias("nyc-taxi-duration", "staging")
    assert registered.run_id == min(complete, key=lambda t: t["loss"])["run_id"]


@pytest.mark.integration
def test_a_ladder_search_repeats_in_batch_mode_tags_each_rung_and_registers_only_a_complete_fit(
    prefect_api_url, data_dir, workdir, capsys, one_worker, two_workers
):
    # --fidelity auto: 1/9 of the rows at 9 rounds, the best third fitted again completely.
    # Batches of 3: the first batch is all new points, promotions come from the second batch on.
    common = [
        "--data-dir",
        str(data_dir),
        "--trials",
        "9",
        "--mode",
        "batch",
        "--batch-size",
        "3",
        "--rounds",
        "18",
        "--max-depth",
        "10",
        "--fidelity",
        "auto",
        "--max-rmse",
        "100",
        "--no-report",
    ]
    one = run_here(capsys, *common, *one_worker, "--no-register")
    two = run_here(capsys, *common, *two_workers)
    assert one["trial_params"] == two["trial_params"] and one["trial_rmse"] == two["trial_rmse"]
    assert [t["fidelity"] for t in one["trials"]] == [t["fidelity"] for t in two["trials"]]
    trials = {t["trial_id"]: t for t in two["trials"]}
    low = [t for t in trials.values() if t["fidelity"]["rung"] == 0]
    up = [t for t in trials.values() if t["fidelity"]["rung"] == 1]
    assert all(t["fidelity"]["rung"] == 0 for t in two["trials"][:3])
    assert up and all(not t["complete"] for t in low) and all(t["complete"] for t in up)
    for t in up:  # the same point, fitted again on all rows and rounds
        first = trials[t["fidelity"]["promoted_from"]]
        assert first["fidelity"]["rung"] == 0 and t["trial_id"] > first["trial_id"] >= 0
        assert two["trial_params"][t["trial_id"]] == two["trial_params"][first["trial_id"]]
    assert two["fidelity"] == "auto" and two["trials_complete"] == len(up) and two["trials_pruned"] == 0
    assert [(r["rung"], r["fits"], r["promoted"]) for r in two["ladder"]] == [
        (0, len(low), 0),
        (1, len(up), len(up)),
    ]
    # each run says what it fitted: the rung, its rows and rounds, what it was promoted from
    client = MlflowClient(two["tracking_uri"])
    low_run, up_run = client.get_run(low[0]["run_id"]), client.get_run(up[0]["run_id"])
    assert json.loads(low_run.data.tags[tracking.FIDELITY_TAG])["rows"] == pytest.approx(1 / 9)
    assert low_run.data.tags[tracking.RUNG_TAG] == "0" and low_run.data.params["rounds"] == "9"
    assert tracking.PROMOTED_FROM_TAG not in low_run.data.tags
    assert up_run.data.tags[tracking.PROMOTED_FROM_TAG] == str(up[0]["fidelity"]["promoted_from"])
    assert up_run.data.params["rounds"] == "18"
    # the best and the registered model are complete fits; --resume reads the rungs back
    assert two["best_rmse"] == min(t["loss"] for t in up)
    registered = client.get_model_version_by_alias("nyc-taxi-duration", "staging")
    assert registered.run_id == min(up, key=lambda t: t["loss"])["run_id"]
    record = tracking.load_search(two["tracking_uri"], two["parent_run_id"])
    assert {tid: t["fidelity"] for tid, t in record.trials.items()} == {
        t["trial_id"]: t["fidelity"] for t in two["trials"]
    }
    assert (
        record.params["fidelity"] == "auto" and record.params["fidelity_model"] == "merged"
    )  # --resume reads it
    # the report reads the same ladder from the store: screened trials are no candidates
    ladder_report = report.collect(two["tracking_uri"], two["parent_run_id"])
    assert sorted(r.state for r in ladder_report.final) == sorted(
        ["screened"] * len(low) + ["complete"] * len(up)
    )
    assert ladder_report.summary()["ladder"] == two["ladder"]
    assert ladder_report.best.run_id == registered.run_id
    # stopped by its budget after the first batch and resumed, it ends as the whole search did
    part = run_here(capsys, *common, *two_workers, "--no-register", "--timeout", "1s")
    assert part["ended_on_timeout"] and len(part["trials"]) < 9
    rest = run_here(capsys, "--data-dir", str(data_dir), "--resume", part["parent_run_id"], *two_workers)
    assert rest["fidelity"] == "auto" and rest["trials_done"] == 9
    assert [(t["fidelity"], t["loss"]) for t in rest["trials"]] == [
        (t["fidelity"], t["loss"]) for t in two["trials"]
    ]
    assert rest["trial_params"] == two["trial_params"]
    # a warm start from it takes its best complete fits (never a cheap one) and screens them first
    warm = run_here(
        capsys,
        *common,
        *two_workers,
        "--no-register",
        "--warm-start",
        two["parent_run_id"],
        "--warm-start-trials",
        "2",
    )
    best2 = sorted(up, key=lambda t: t["loss"])[:2]
    assert warm["warm_start"] == [f"{two['parent_run_id']}:{t['trial_id']}" for t in best2]
    assert [t["fidelity"]["rung"] for t in warm["trials"][:2]] == [0, 0]
    for got, source in zip(warm["trial_params"][:2], best2):
        want = two["trial_params"][source["trial_id"]]
        assert (
            got["learning_rate"] == pytest.approx(want["learning_rate"])
            and got["max_depth"] == want["max_depth"]
        )


@pytest.mark.integration
def test_the_time_budget_starts_nothing_after_it_and_resume_runs_the_rest(
    prefect_api_url, data_dir, workdir, capsys, two_workers
):
    # When the budget runs out against a fake clock is tests/test_search.py's; here: the flow
    # ends on it with trials not started, none stopped, and --resume runs exactly those, ending
    # as the search was to end (its threshold, above any of these small trials' RMSE; no report).
    common = ["--data-dir", str(data_dir), "--max-rmse", "10", "--no-report", *SMALL, *two_workers]
    s = run_here(capsys, *common, "--trials", "10", "--timeout", "1s")
    assert s["ended_on_timeout"] and s["trials_not_started"] > 0 and s["trials_cancelled"] == 0
    assert len(s["trials"]) == 10 - s["trials_not_started"]
    started = sorted(t["trial_id"] for t in s["trials"])
    assert started == list(range(len(started))) and all(t["error"] is None for t in s["trials"])
    client = MlflowClient(s["tracking_uri"])
    assert client.get_run(s["parent_run_id"]).data.tags["ended_on_timeout"] == "true"
    rest = run_here(capsys, "--data-dir", str(data_dir), "--resume", s["parent_run_id"], *two_workers)
    assert (
        rest["stderr"]
        .splitlines()[0]
        .endswith(
            "registering below RMSE 10 (the search's own) and 2e-05 s a row (the search's own), "
            "report off (the search's own)"
        )
    ), rest["stderr"][:500]
    assert rest["registered_version"] is not None and rest["report"] is None
    assert rest["trials_done"] == 10 and not rest["ended_on_timeout"]
    assert rest["parent_run_id"] == s["parent_run_id"]
    # the trials of the first part are not run again: their runs are the ones it made
    assert [t["run_id"] for t in rest["trials"][: len(started)]] == [t["run_id"] for t in s["trials"]]


@pytest.mark.integration
def test_a_killing_budget_stops_running_trials_and_ends_their_runs_killed(
    prefect_api_url, data_dir, workdir, capsys, two_workers
):
    # deep trees, many rounds, a slow learning rate at seed 7's first points: running when the
    # budget ends
    s = run_here(
        capsys,
        "--data-dir",
        str(data_dir),
        "--no-register",
        "--no-report",
        "--trials",
        "4",
        *two_workers,
        "--rounds",
        "400",
        "--max-depth",
        "40",
        "--seed",
        "7",
        "--timeout",
        "1s",
        "--timeout-kill",
    )
    cancelled = [t for t in s["trials"] if t["error"] and "time budget" in t["error"]]
    assert s["ended_on_timeout"] and s["trials_cancelled"] == len(cancelled) >= 1
    client = MlflowClient(s["tracking_uri"])
    assert {client.get_run(t["run_id"]).info.status for t in cancelled} == {"KILLED"}
    # stopped between two rounds, not run to the end
    for t in cancelled:
        stopped_after = int(re.search(r"stopped after round (\d+)", t["error"]).group(1))
        assert 1 <= stopped_after < 400, t["error"]


@pytest.mark.integration
def test_a_warm_start_first_evaluates_the_best_points_of_the_last_search(
    prefect_api_url, data_dir, workdir, capsys, two_workers
):
    common = ["--data-dir", str(data_dir), "--no-register", "--no-report", "--rounds", "10", *two_workers]
    cold = run_here(capsys, *common, "--trials", "6", "--max-depth", "12", "--seed", "3")
    best3 = sorted(cold["trials"], key=lambda t: t["loss"])[:3]
    # latest: the cold search; depth capped lower this time, so the points are kept inside the space
    warm = run_here(
        capsys,
        *common,
        "--trials",
        "4",
        "--max-depth",
        "8",
        "--seed",
        "9",
        "--warm-start",
        "latest",
        "--warm-start-trials",
        "3",
    )
    assert warm["warm_start"] == [f"{cold['parent_run_id']}:{t['trial_id']}" for t in best3]
    for got, source in zip(warm["trial_params"][:3], best3):
        want = cold["trial_params"][source["trial_id"]]
        assert got["learning_rate"] == pytest.approx(want["learning_rate"])
        assert got["max_depth"] == min(want["max_depth"], 8)
    client = MlflowClient(warm["tracking_uri"])
    runs = {
        r.data.tags.get(tracking.TRIAL_TAG): r
        for r in tracking.child_runs(warm["tracking_uri"], warm["parent_run_id"])
    }
    assert [runs[str(i)].data.tags.get(tracking.WARM_FROM_TAG) for i in range(4)] == [
        *warm["warm_start"],
        None,
    ]
    assert (
        json.loads(client.get_run(warm["parent_run_id"]).data.tags[tracking.WARM_TAG])[0]["from"]
        == warm["warm_start"][0]
    )
    # an explicit parent run id works the same; one that is no search is refused before anything runs
    again = run_here(
        capsys, *common, "--trials", "1", "--warm-start", cold["parent_run_id"], "--warm-start-trials", "1"
    )
    assert again["warm_start"] == warm["warm_start"][:1]
    runs_before = len(client.search_runs([warm["experiment_id"]]))
    assert cli.main(["run", *common, "--trials", "1", "--warm-start", "0123456789abcdef", "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("taxi-hpo: error:")
    assert "0123456789abcdef" in err
    assert len(client.search_runs([warm["experiment_id"]])) == runs_before  # no run was started
