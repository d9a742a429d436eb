"""Faults on real processes: a killed worker, a killed flow, Ctrl-C, a trial that raises."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from helpers import (  # noqa: F401 - test_tracking_outage imports finish, start_cli, wait_for from here
    finish,
    finished_once,
    finished_trials,
    freeze_running_trial,
    run_here,
    running_trials,
    search_run,
    start_cli,
    trial_runs,
    wait_for,
    wait_gone,
    worker_processes,
)
from taxi_hpo import tracking

pytestmark = pytest.mark.integration

#: Trials short enough for a test; the faults are gated on events (a trial's run open in the
#: store, processes gone), not on how long a trial takes.
SMALL = ["--rounds", "10", "--max-depth", "8", "--no-register", "--no-report"]


def test_killed_worker_reruns_trial_once(prefect_api_url, data_dir, workdir):
    proc = start_cli(
        workdir, prefect_api_url, "--data-dir", str(data_dir), "--trials", "6", "--workers", "2", *SMALL
    )
    db = workdir / "mlflow.db"
    _, victim = freeze_running_trial(db)
    os.kill(victim, signal.SIGKILL)
    summary = finish(proc)
    assert (summary["trials_done"], summary["trials_failed"]) == (6, 0)
    finished_once(db, 6)
    not_finished = [r for r in trial_runs(db) if r[1] != "FINISHED"]
    assert len(not_finished) == 1 and not_finished[0][1] == "KILLED", not_finished  # as the README says
    assert int(not_finished[0][2].split(":")[1]) == victim
    assert summary["preprocessor_artifacts"] == 1


def test_a_trial_that_kills_its_worker_every_time_is_a_failed_trial(
    prefect_api_url, data_dir, workdir, monkeypatch
):
    """A poison trial (a segfault, the OOM killer): Dask gives up on it after
    ``distributed.scheduler.allowed-failures`` dead workers (0 here, 3 by default) and the
    search counts it as failed and goes on."""
    monkeypatch.setenv("DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES", "0")
    proc = start_cli(
        workdir, prefect_api_url, "--data-dir", str(data_dir), "--trials", "4", "--workers", "2", *SMALL
    )
    db = workdir / "mlflow.db"
    # trial 0's worker, stopped while trial 0 provably runs there, then killed; so is any later
    # attempt at it (there is none with allowed-failures 0)
    _, victim = freeze_running_trial(db, where=lambda trial, pid: trial == "0")
    killed = {victim}
    os.kill(victim, signal.SIGKILL)
    while proc.poll() is None:
        for trial, pid in running_trials(db):
            if trial == "0" and pid not in killed:
                killed.add(pid)
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    summary = finish(proc)
    assert (summary["trials_done"], summary["trials_failed"]) == (3, 1), summary
    assert summary["trial_rmse"][0] is None and all(summary["trial_rmse"][1:])
    statuses = {}
    for trial, status, _ in trial_runs(db):
        statuses.setdefault(int(trial), []).append(status)
    assert set(statuses[0]) == {"KILLED"} and all(statuses[t] == ["FINISHED"] for t in (1, 2, 3)), statuses
    assert {int(w.split(":")[1]) for t, _, w in trial_runs(db) if t == "0"} == killed
    parent = search_run(db)
    record = tracking.load_search(f"sqlite:///{db}", parent)
    assert set(record.failed) == {0} and "KilledWorker" in record.failed[0]["error"]
    assert tracking.run_status(f"sqlite:///{db}", parent) == "FINISHED"


def test_killed_flow_resumes_with_the_same_batch_suggestions(
    prefect_api_url, data_dir, workdir, tmp_path, monkeypatch, capsys
):
    args = [
        "--data-dir",
        str(data_dir),
        "--trials",
        "6",
        "--workers",
        "2",
        "--mode",
        "batch",
        "--batch-size",
        "2",
        *SMALL,
    ]
    # the uninterrupted search, in this process (what is under test is the killed one's)
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    monkeypatch.chdir(reference_dir)
    reference = run_here(capsys, *args)
    monkeypatch.chdir(workdir)

    proc = start_cli(workdir, prefect_api_url, *args)
    db = workdir / "mlflow.db"
    wait_for(lambda: len(finished_trials(db)) >= 3, 180, "three finished trials")
    children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    workers = worker_processes(proc)
    assert len(workers) == 2, children
    proc.kill()
    proc.wait()
    # the worker watchdog, as the README says: no orphans left to write runs
    wait_gone(workers, "the killed flow's workers")
    wait_gone(children, "the killed flow's other processes")
    parent = search_run(db)
    uri = f"sqlite:///{db}"
    # as the README says: the parent run of a killed flow stays RUNNING (nothing could end it) ...
    assert tracking.run_status(uri, parent) == "RUNNING"
    assert len(finished_trials(db)) < 6
    # ... and --resume goes on with it
    resumed = run_here(capsys, "--resume", parent, "--workers", "1")
    assert resumed["parent_run_id"] == parent
    assert resumed["trial_params"] == reference["trial_params"]
    assert resumed["trials_done"] == 6 and resumed["preprocessor_artifacts"] == 1
    finished_once(db, 6)
    assert tracking.run_status(uri, parent) == "FINISHED"


def test_ctrl_c_kills_run_cleans_up_and_resumes(prefect_api_url, data_dir, workdir, capsys):
    proc = start_cli(
        workdir, prefect_api_url, "--data-dir", str(data_dir), "--trials", "6", "--workers", "2", *SMALL
    )
    db = workdir / "mlflow.db"
    wait_for(lambda: finished_trials(db), 180, "a finished trial")
    children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err.strip().splitlines()[-1], err[-2000:]
    wait_gone(children, "the interrupted run's processes")
    parent = search_run(db)
    uri = f"sqlite:///{db}"
    assert tracking.run_status(uri, parent) == "KILLED"
    assert not [r for r in trial_runs(db) if r[1] == "RUNNING"]
    assert len(finished_trials(db)) < 6  # something was left for --resume to run
    resumed = run_here(capsys, "--resume", parent)
    assert resumed["trials_done"] == 6
    finished_once(db, 6)
