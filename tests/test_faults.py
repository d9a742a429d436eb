"""Faults on real processes: a killed worker, a killed flow, Ctrl-C, a trial that raises."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from helpers import (  # noqa: F401
    finish,
    finished_once,
    finished_trials,
    running_trials,
    search_run,
    start_cli,
    trial_runs,
    wait_for,
)
from taxi_hpo import tracking

pytestmark = pytest.mark.integration

SMALL = ["--rounds", "8", "--max-depth", "8", "--no-register"]


def assert_gone(pids: list[int], within: float = 10.0) -> None:
    deadline = time.time() + within
    alive = pids
    while time.time() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return
        time.sleep(0.02)
    raise AssertionError(f"processes still alive: {alive}")


def freeze_a_running_worker(db: Path, timeout: float = 120) -> int:
    """A worker pid stopped (SIGSTOP) while its trial's run is open: it cannot finish that trial
    before the kill, so killing it cannot race a finishing trial."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for _, pid in wait_for(lambda: running_trials(db), deadline - time.time(), "a running trial"):
            os.kill(pid, signal.SIGSTOP)
            if pid in [p for _, p in running_trials(db)]:
                return pid
            os.kill(pid, signal.SIGCONT)  # its trial ended in between: try another
    raise AssertionError("no worker held a running trial")


def test_killed_worker_reruns_trial_once(prefect_api_url, data_dir, workdir):
    proc = start_cli(workdir, prefect_api_url, "--data-dir", str(data_dir), "--trials", "6", "--workers", "2",
                     "--rounds", "60", "--max-depth", "14", "--no-register")
    db = workdir / "mlflow.db"
    victim = freeze_a_running_worker(db)
    os.kill(victim, signal.SIGKILL)
    summary = finish(proc)
    assert (summary["trials_done"], summary["trials_failed"]) == (6, 0)
    finished_once(db, 6)
    not_finished = [r for r in trial_runs(db) if r[1] != "FINISHED"]
    assert len(not_finished) == 1 and not_finished[0][1] == "KILLED", not_finished   # as the README says
    assert int(not_finished[0][2].split(":")[1]) == victim
    assert summary["preprocessor_artifacts"] == 1


def test_a_trial_that_kills_its_worker_every_time_is_a_failed_trial(prefect_api_url, data_dir, workdir, monkeypatch):
    """A poison trial (a segfault, the OOM killer): Dask gives up on it after
    ``distributed.scheduler.allowed-failures`` dead workers (0 here, 3 by default) and the
    search counts it as failed and goes on."""
    monkeypatch.setenv("DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES", "0")
    proc = start_cli(workdir, prefect_api_url, "--data-dir", str(data_dir), "--trials", "4", "--workers", "2",
                     "--rounds", "40", "--max-depth", "10", "--no-register", "--no-report")
    db = workdir / "mlflow.db"
    killed = set()
    while proc.poll() is None:   # every attempt at trial 0 dies with its worker
        for trial, pid in running_trials(db):
            if trial == "0" and pid not in killed:
                killed.add(pid)
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    summary = finish(proc)
    assert killed
    assert (summary["trials_done"], summary["trials_failed"]) == (3, 1), summary
    assert summary["trial_rmse"][0] is None and all(summary["trial_rmse"][1:])
    statuses = {}
    for trial, status, _ in trial_runs(db):
        statuses.setdefault(int(trial), []).append(status)
    assert set(statuses[0]) == {"KILLED"} and all(statuses[t] == ["FINISHED"] for t in (1, 2, 3)), statuses
    parent = search_run(db)
    record = tracking.load_search(f"sqlite:///{db}", parent)
    assert set(record.failed) == {0} and "KilledWorker" in record.failed[0]["error"]
    assert tracking.run_status(f"sqlite:///{db}", parent) == "FINISHED"


def test_killed_flow_resumes_with_the_same_batch_suggestions(prefect_api_url, data_dir, workdir, tmp_path):
    args = ["--data-dir", str(data_dir), "--trials", "6", "--workers", "2", "--mode", "batch",
            "--batch-size", "2", *SMALL]
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    reference = finish(start_cli(reference_dir, prefect_api_url, *args))

    proc = start_cli(workdir, prefect_api_url, *args)
    db = workdir / "mlflow.db"
    wait_for(lambda: len(finished_trials(db)) >= 3, 180, "three finished trials")
    children = psutil.Process(proc.pid).children(recursive=True)
    workers = [c.pid for c in children if "spawn_main" in " ".join(c.cmdline())]
    assert len(workers) == 2, [c.cmdline() for c in children]
    proc.kill()
    proc.wait()
    assert_gone(workers, within=1.0)  # the worker watchdog, as the README says: no orphans left to write runs
    assert_gone([c.pid for c in children])
    parent = search_run(db)
    resumed = finish(start_cli(workdir, prefect_api_url, "--resume", parent, "--workers", "1"))
    assert resumed["parent_run_id"] == parent
    assert resumed["trial_params"] == reference["trial_params"]
    assert resumed["trials_done"] == 6 and resumed["preprocessor_artifacts"] == 1
    finished_once(db, 6)
    assert tracking.run_status(f"sqlite:///{db}", parent) == "FINISHED"


def test_ctrl_c_kills_run_cleans_up_and_resumes(prefect_api_url, data_dir, workdir):
    proc = start_cli(workdir, prefect_api_url, "--data-dir", str(data_dir), "--trials", "8", "--workers", "2",
                     "--rounds", "30", "--max-depth", "10", "--no-register")
    db = workdir / "mlflow.db"
    wait_for(lambda: finished_trials(db), 180, "a finished trial")
    children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert time.time() - sent < 20
    assert_gone(children, within=5)
    parent = search_run(db)
    uri = f"sqlite:///{db}"
    assert tracking.run_status(uri, parent) == "KILLED"
    assert not [r for r in trial_runs(db) if r[1] == "RUNNING"]
    resumed = finish(start_cli(workdir, prefect_api_url, "--resume", parent))
    assert resumed["trials_done"] == 8
    finished_once(db, 8)
