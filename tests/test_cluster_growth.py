"""Slots follow the cluster: real ``dask scheduler`` and ``dask worker`` processes joining and
leaving during a search, and clusters created by a cluster manager given by dotted path
(``--cluster-class``, ``--cluster-kwargs``, ``--adapt``), as prefect-dask creates them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import threading
from pathlib import Path

import pytest

from helpers import (
    finish,
    finished_once,
    freeze_running_trial,
    start_cli,
    trial_runs,
    wait_for,
    worker_processes,
)

pytestmark = pytest.mark.integration

#: Short trials: joins and departures are gated on events (a trial provably running, a worker
#: provably present or gone), not on trials long enough for the event to happen meanwhile.
TRIALS = ["--rounds", "10", "--max-depth", "8", "--no-register", "--no-report"]
#: ... except where Dask's Adaptive must start workers before the search is over: it starts them
#: only while it sees trials queued, so the first trials must outlast a worker's start (a fork of
#: the command's fork server: a fraction of a second).
ADAPT_TRIALS = ["--rounds", "15", "--max-depth", "10", "--no-register", "--no-report"]


def workers_of(db: Path, missing_ok: bool = False) -> dict[int, set[str]]:
    """Trial id -> the pids (from the worker tag, host:pid:thread) its runs ran in."""
    out: dict[int, set[str]] = {}
    for trial, _, worker in trial_runs(db, missing_ok):
        out.setdefault(int(trial), set()).add(worker.split(":")[1] if ":" in worker else worker)
    return out


def runs_on(db: Path, pid: int) -> set[str]:
    """Run ids of the trial runs the worker process ``pid`` opened."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            """select r.run_uuid from runs r join tags w on w.run_uuid = r.run_uuid
                               and w.key = 'worker' where w.value like ?""",
            (f"%:{pid}:%",),
        ).fetchall()
    return {run for (run,) in rows}


@contextlib.contextmanager
def frozen(pid: int):
    """``pid`` is stopped (see freeze_running_trial) until the block ends."""
    try:
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def test_a_worker_that_joins_mid_search_gets_trials_and_when_it_leaves_loses_no_trial(
    dask_processes, data_dir, workdir, prefect_api_url
):
    """An elastic cluster's life in one search: w2 joins while w1 is stuck, takes trials, and is
    retired while it provably holds a running one; that trial runs again on w1, and nothing
    starts on w2 after it left."""
    dask_processes.worker("w1")
    proc = start_cli(
        workdir,
        prefect_api_url,
        "--address",
        dask_processes.address,
        "--data-dir",
        str(data_dir),
        "--trials",
        "8",
        *TRIALS,
    )
    db = workdir / "mlflow.db"
    # w1 stopped while it runs a trial: the search cannot go on without the worker that joins
    _, w1 = freeze_running_trial(db)
    with frozen(w1):
        leaving = dask_processes.worker("w2")  # joins while the search runs on one worker
        w2 = dask_processes.pid("w2")
        # the joined worker gets a trial, and holds it (stopped) when it is told to go
        held, _ = freeze_running_trial(db, where=lambda trial, pid: pid == w2)
    with frozen(w2):
        retire = threading.Thread(
            target=dask_processes.client.retire_workers, args=([leaving],), kwargs={"close_workers": True}
        )
        retire.start()  # scaled down
        wait_for(
            lambda: dask_processes.workers().get(leaving, {}).get("status", "gone") != "running",
            60,
            "the scheduler to retire the worker",
        )
    retire.join(120)
    assert not retire.is_alive()
    wait_for(lambda: dask_processes.address_of("w2") is None, 60, "the retired worker to leave")
    ran_there = runs_on(db, w2)
    assert held in {t for t, _, w in trial_runs(db) if f":{w2}:" in w}
    summary = finish(proc)
    assert (summary["trials_done"], summary["trials_failed"]) == (8, 0)
    finished_once(db, 8)  # each trial exactly one FINISHED run, none left RUNNING: the held one too
    # the slots the search saw: one worker, then two, then one again
    slots = [n for _, n in summary["slots_seen"]]
    assert slots[:2] == [1, 2] and slots[-1] == 1, summary["slots_seen"]
    assert runs_on(db, w2) == ran_there  # nothing started on the retired worker after it left


def adapting_search(workdir, api_url, data_dir, cluster_class, kwargs, trials, *args):
    """``taxi-hpo run`` on a cluster that ``cluster_class`` creates from ``kwargs`` (given as a
    YAML file, the file form of --cluster-kwargs), adapting between 1 and 3 workers."""
    import yaml

    spec = workdir / "cluster.yaml"
    spec.write_text(yaml.safe_dump(kwargs))
    return start_cli(
        workdir,
        api_url,
        "--cluster-class",
        cluster_class,
        "--cluster-kwargs",
        str(spec),
        "--adapt",
        "1:3",
        "--data-dir",
        str(data_dir),
        "--trials",
        str(trials),
        *args,
    )


def test_a_spec_cluster_by_dotted_path_adapts_between_1_and_3_workers(data_dir, workdir, prefect_api_url):
    """The search queues trials for MAX workers, so the cluster a manager creates grows."""
    nanny = {"cls": "distributed.Nanny", "options": {"nthreads": 1, "host": "127.0.0.1"}}
    kwargs = {
        "scheduler": {
            "cls": "distributed.Scheduler",
            "options": {"dashboard_address": ":0", "host": "127.0.0.1"},
        },
        "workers": {"w0": nanny},
        "worker": nanny,
    }
    proc = adapting_search(
        workdir, prefect_api_url, data_dir, "distributed.SpecCluster", kwargs, 9, *ADAPT_TRIALS
    )
    summary = finish(proc)
    assert (summary["trials_done"], summary["trials_failed"]) == (9, 0)
    finished_once(workdir / "mlflow.db", 9)
    slots = [n for _, n in summary["slots_seen"]]
    assert slots[0] == 1 and max(slots) >= 2, summary["slots_seen"]  # grew while trials were queued
    assert len({pid for pids in workers_of(workdir / "mlflow.db").values() for pid in pids}) >= 2


def test_a_local_cluster_by_dotted_path_grows_then_shrinks_as_the_tail_leaves_workers_idle(
    data_dir, workdir, prefect_api_url, monkeypatch
):
    """It grows while trials are queued; once no trial is left to queue, the workers the tail
    leaves idle are retired by Dask's Adaptive (told here to act after one idle 200 ms interval
    instead of three 1 s ones). A worker frozen under the tail's trial kept the others from
    retiring (Dask moves what a retiring worker holds, and a frozen peer never answers): the
    tail here is a trial still running."""
    monkeypatch.setenv("DASK_DISTRIBUTED__ADAPTIVE__INTERVAL", "200ms")
    monkeypatch.setenv("DASK_DISTRIBUTED__ADAPTIVE__WAIT_COUNT", "1")
    kwargs = {"n_workers": 1, "threads_per_worker": 1, "processes": True, "dashboard_address": ":0"}
    proc = adapting_search(
        workdir, prefect_api_url, data_dir, "distributed.LocalCluster", kwargs, 7, *ADAPT_TRIALS
    )
    # its workers are forks of the command's fork server, as a LocalCluster's of its own are
    wait_for(lambda: worker_processes(proc, forked_only=True), 120, "a forked worker of the created cluster")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]  # the workers Adaptive retired were no error
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["trials_done"], summary["trials_failed"]) == (7, 0)
    finished_once(workdir / "mlflow.db", 7)
    slots = [n for _, n in summary["slots_seen"]]
    peak = slots.index(max(slots))
    assert slots[0] == 1 and max(slots) >= 2, summary["slots_seen"]  # grew while trials were queued
    assert min(slots[peak:]) < max(slots), summary["slots_seen"]  # and shrank before the end
    assert len({pid for pids in workers_of(workdir / "mlflow.db").values() for pid in pids}) >= 2


def test_workers_of_a_created_cluster_are_checked_before_the_search(data_dir, workdir, prefect_api_url):
    """A cluster whose worker listens on this host's network address counts as another host's:
    a sqlite store is refused in one line, before the search's parent run exists."""
    import psutil

    addresses = [
        a.address
        for nic in psutil.net_if_addrs().values()
        for a in nic
        if a.family.name == "AF_INET" and not a.address.startswith("127.")
    ]
    if not addresses:
        pytest.skip("this machine has no network address besides loopback to put a worker on")
    kwargs = {
        "scheduler": {"cls": "distributed.Scheduler", "options": {"dashboard_address": ":0"}},
        "workers": {"w0": {"cls": "distributed.Nanny", "options": {"nthreads": 1, "host": addresses[0]}}},
    }
    proc = start_cli(
        workdir,
        prefect_api_url,
        "--cluster-class",
        "distributed.SpecCluster",
        "--cluster-kwargs",
        json.dumps(kwargs),
        "--data-dir",
        str(data_dir),
        "--trials",
        "2",
        *TRIALS,
    )
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("taxi-hpo: error: --tracking-uri sqlite:"), err[-2000:]
    assert "cannot open" in lines[0]
    db = workdir / "mlflow.db"
    if db.exists():  # refused before the search's parent run (or any other) exists
        with sqlite3.connect(db) as conn:
            assert conn.execute("select count(*) from runs").fetchone()[0] == 0
