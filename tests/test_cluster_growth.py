"""Slots follow the cluster: real ``dask scheduler`` and ``dask worker`` processes joining and
leaving during a search, and clusters created by a cluster manager given by dotted path
(``--cluster-class``, ``--cluster-kwargs``, ``--adapt``), as prefect-dask creates them."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from helpers import finish, finished_once, finished_trials, running_trials, start_cli, trial_runs, wait_for

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
TRIALS = ["--rounds", "60", "--max-depth", "14", "--no-register", "--no-report"]


def workers_of(db: Path) -> dict[int, set[str]]:
    """Trial id -> the pids (from the worker tag, host:pid:thread) its runs ran in."""
    out: dict[int, set[str]] = {}
    for trial, _, worker in trial_runs(db):
        out.setdefault(int(trial), set()).add(worker.split(":")[1] if ":" in worker else worker)
    return out


def test_a_worker_that_joins_mid_search_gets_trials(dask_processes, data_dir, workdir, prefect_api_url):
    dask_processes.worker("w1")
    proc = start_cli(workdir, prefect_api_url, "--address", dask_processes.address, "--data-dir", str(data_dir),
                     "--trials", "8", *TRIALS)
    db = workdir / "mlflow.db"
    wait_for(lambda: running_trials(db), 120, "the first trial")
    dask_processes.worker("w2")  # joins while the search runs on one worker
    joined_pid = dask_processes.pid("w2")
    summary = finish(proc)
    assert (summary["trials_done"], summary["trials_failed"]) == (8, 0)
    finished_once(db, 8)
    ran_on = {pid for pids in workers_of(db).values() for pid in pids}
    assert str(joined_pid) in ran_on, "the worker that joined ran no trial"
    # the slots the search saw: one worker, then two
    assert [n for _, n in summary["slots_seen"]][:2] == [1, 2]


def test_a_worker_that_leaves_takes_its_slot_and_loses_no_trial(dask_processes, data_dir, workdir, prefect_api_url):
    dask_processes.worker("w1")
    leaving = dask_processes.worker("w2")
    leaving_pid = dask_processes.pid("w2")
    proc = start_cli(workdir, prefect_api_url, "--address", dask_processes.address, "--data-dir", str(data_dir),
                     "--trials", "8", *TRIALS)
    db = workdir / "mlflow.db"
    wait_for(lambda: len(finished_trials(db)) >= 2, 180, "two finished trials")
    dask_processes.client.retire_workers([leaving], close_workers=True)  # scaled down
    gone = time.time()
    summary = finish(proc)
    assert (summary["trials_done"], summary["trials_failed"]) == (8, 0)
    finished_once(db, 8)  # each trial exactly one FINISHED run, none left RUNNING
    assert summary["slots_seen"][-1][1] == 1
    # nothing started on the retired worker after it left
    client_pid = str(leaving_pid)
    import sqlite3

    with sqlite3.connect(db) as conn:
        late = conn.execute("""select r.start_time from runs r join tags w on w.run_uuid = r.run_uuid
                               and w.key = 'worker' where w.value like ?""", (f"%:{client_pid}:%",)).fetchall()
    assert all(start / 1000 < gone + 1 for (start,) in late)


@pytest.mark.parametrize("cluster_class, kwargs", [
    ("distributed.LocalCluster", {"n_workers": 1, "threads_per_worker": 1, "processes": True,
                                  "dashboard_address": ":0"}),
    ("distributed.SpecCluster", {"scheduler": {"cls": "distributed.Scheduler",
                                               "options": {"dashboard_address": ":0", "host": "127.0.0.1"}},
                                 "workers": {"w0": {"cls": "distributed.Nanny",
                                                    "options": {"nthreads": 1, "host": "127.0.0.1"}}},
                                 "worker": {"cls": "distributed.Nanny", "options": {"nthreads": 1, "host": "127.0.0.1"}}}),
])
def test_a_cluster_manager_by_dotted_path_adapts_between_1_and_3_workers(cluster_class, kwargs, data_dir, workdir,
                                                                         prefect_api_url, tmp_path):
    spec = tmp_path / "cluster.yaml"
    import yaml

    spec.write_text(yaml.safe_dump(kwargs))  # the YAML file form of --cluster-kwargs
    proc = start_cli(workdir, prefect_api_url, "--cluster-class", cluster_class, "--cluster-kwargs", str(spec),
                     "--adapt", "1:3", "--data-dir", str(data_dir), "--trials", "9", *TRIALS)
    summary = finish(proc)
    assert (summary["trials_done"], summary["trials_failed"]) == (9, 0)
    finished_once(workdir / "mlflow.db", 9)
    slots = [n for _, n in summary["slots_seen"]]
    assert slots[0] == 1 and max(slots) >= 2, summary["slots_seen"]  # grew while trials were queued
    assert len({pid for pids in workers_of(workdir / "mlflow.db").values() for pid in pids}) >= 2


def test_workers_of_a_created_cluster_are_checked_before_the_search(data_dir, workdir, prefect_api_url):
    """A cluster whose worker listens on this host's network address counts as another host's:
    a sqlite store is refused in one line, before the search's parent run exists."""
    import psutil

    addresses = [a.address for nic in psutil.net_if_addrs().values() for a in nic
                 if a.family.name == "AF_INET" and not a.address.startswith("127.")]
    if not addresses:
        pytest.skip("this machine has no network address besides loopback to put a worker on")
    kwargs = {"scheduler": {"cls": "distributed.Scheduler", "options": {"dashboard_address": ":0"}},
              "workers": {"w0": {"cls": "distributed.Nanny", "options": {"nthreads": 1, "host": addresses[0]}}}}
    proc = start_cli(workdir, prefect_api_url, "--cluster-class", "distributed.SpecCluster", "--cluster-kwargs",
                     json.dumps(kwargs), "--data-dir", str(data_dir), "--trials", "2", *TRIALS)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("taxi-hpo: error: --tracking-uri sqlite:"), err[-2000:]
    assert "cannot open" in lines[0]
    assert [r for r in trial_runs(workdir / "mlflow.db")] == []


def test_with_adapt_the_cluster_shrinks_as_the_tail_leaves_workers_idle(data_dir, workdir, prefect_api_url, monkeypatch):
    """The search queues trials for MAX workers, so the cluster grows; once no trial is left to
    queue, the workers the tail leaves idle are retired by Dask's Adaptive (told here to act after
    one idle 200 ms interval instead of three 1 s ones, so a short test sees it)."""
    monkeypatch.setenv("DASK_DISTRIBUTED__ADAPTIVE__INTERVAL", "200ms")
    monkeypatch.setenv("DASK_DISTRIBUTED__ADAPTIVE__WAIT_COUNT", "1")
    kwargs = {"n_workers": 1, "threads_per_worker": 1, "processes": True, "dashboard_address": ":0"}
    proc = start_cli(workdir, prefect_api_url, "--cluster-class", "distributed.LocalCluster", "--cluster-kwargs",
                     json.dumps(kwargs), "--adapt", "1:3", "--data-dir", str(data_dir), "--trials", "7", *TRIALS)
    summary = finish(proc)
    assert summary["trials_done"] == 7
    slots = [n for _, n in summary["slots_seen"]]
    peak = slots.index(max(slots))
    assert max(slots) >= 2 and min(slots[peak:]) < max(slots), summary["slots_seen"]
