"""Helpers the tests share (import them with ``from helpers import ...``; tests/ is on sys.path).

Real processes only: a free port, waiting for an event, the ``taxi-hpo run`` CLI as a
subprocess, the trial runs of a sqlite MLflow store, and real ``dask scheduler`` / ``dask worker``
processes that come and go.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now at ``host``."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def read_env_file(path: Path) -> dict[str, str]:
    """The ``export NAME='VALUE'`` lines of a credentials file of the cluster/local scripts."""
    return dict(re.findall(r"^export (\w+)='([^']*)'$", path.read_text(), re.M))


def server_credentials(run_dir: Path) -> dict[str, str]:
    """Both servers' credentials from the folder their start scripts (or the image's secrets role) wrote."""
    return {**read_env_file(run_dir / "mlflow-auth.env"), **read_env_file(run_dir / "prefect-auth.env")}


def http_status(url: str, authorization: str | None = None) -> int:
    """The HTTP status a GET of ``url`` gets (with that Authorization header, if given)."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Authorization": authorization} if authorization else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def basic_auth(user_colon_password: str) -> str:
    """The Authorization header of HTTP basic auth."""
    import base64

    return "Basic " + base64.b64encode(user_colon_password.encode()).decode()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    """Poll ``predicate`` until it returns something true (returned), or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# -- the CLI as a real process ----------------------------------------------------------------


def start_cli(workdir: Path, api_url: str | None, *args: str, env: dict | None = None) -> subprocess.Popen:
    """``taxi-hpo run ARGS --json`` in ``workdir``, talking to the Prefect API at ``api_url`` (None:
    none set, so the run starts its own); ``env``: the environment instead of this process's."""
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    env.pop("PREFECT_API_URL", None)
    env.update({"PREFECT_API_URL": api_url} if api_url else {})
    return subprocess.Popen(
        [sys.executable, "-m", "taxi_hpo.cli", "run", *args, "--json"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_here(capsys, *args: str) -> dict:
    """``taxi-hpo run ARGS --json`` in this process (its imports and fork server already there: a
    search that is not about a fresh process); it must exit 0. Its summary, and ``stderr``."""
    from taxi_hpo import cli

    code = cli.main(["run", *args, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return {**json.loads(out.strip().splitlines()[-1]), "stderr": err}


def finish(proc: subprocess.Popen, timeout: float = 300) -> dict:
    """Wait for a :func:`start_cli` process; it must exit 0. Its ``--json`` summary."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


# -- what a sqlite MLflow store holds ---------------------------------------------------------

_TRIAL_RUNS = """select t.value, r.status, coalesce(w.value, '') from runs r
                 join tags t on t.run_uuid = r.run_uuid and t.key = 'trial_id'
                 left join tags w on w.run_uuid = r.run_uuid and w.key = 'worker'"""


def trial_runs(db: Path, missing_ok: bool = False) -> list[tuple[str, str, str]]:
    """(trial id, status, worker tag) of every trial run in the store.

    A store that does not exist fails (an empty list would pass a test looking for "no trial
    run" whatever the search did), unless ``missing_ok``: polling a search that has not yet made
    its store. A store still being created (no ``runs`` table yet) is empty when polled."""
    if not Path(db).is_file():
        if missing_ok:
            return []
        raise AssertionError(f"no MLflow store at {db}")
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return [tuple(row) for row in conn.execute(_TRIAL_RUNS)]
    except sqlite3.OperationalError:
        if missing_ok:  # the store is still being created
            return []
        raise


def running_trials(db: Path) -> list[tuple[str, int]]:
    """(trial id, worker pid) of the trial runs open right now (polling: a missing store is empty)."""
    return [
        (t, int(w.split(":")[1]))
        for t, status, w in trial_runs(db, missing_ok=True)
        if status == "RUNNING" and w
    ]


def finished_trials(db: Path) -> list[str]:
    """Trial ids with a FINISHED run (polling: a missing store is empty)."""
    return [t for t, status, _ in trial_runs(db, missing_ok=True) if status == "FINISHED"]


def finished_once(db: Path, n: int) -> None:
    """Trials 0..n-1 each have exactly one FINISHED run, and no run is left RUNNING."""
    rows = trial_runs(db)
    finished = sorted(int(t) for t, status, _ in rows if status == "FINISHED")
    assert finished == list(range(n)), rows
    assert not [r for r in rows if r[1] == "RUNNING"], rows


def search_run(db: Path) -> str:
    """The run id of the one search (parent) run in the store."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("""select r.run_uuid from runs r join tags t on t.run_uuid = r.run_uuid
                               where t.key = 'taxi_hpo.role' and t.value = 'search'""").fetchall()
    assert len(rows) == 1, rows
    return rows[0][0]


# -- real dask scheduler and worker processes -------------------------------------------------


def migrated_prefect_home(home: Path) -> Path:
    """``home`` made a PREFECT_HOME whose database is a copy of the session API server's (sqlite
    backup): migrated, as a user's is after the first start. A fresh one costs a server ~5 CPU-s
    of migrations, which the session's own server start already tests."""
    import sqlite3

    home.mkdir(parents=True, exist_ok=True)
    session_db = Path(os.environ["PREFECT_HOME"]) / "prefect.db"
    with sqlite3.connect(session_db) as src, sqlite3.connect(home / "prefect.db") as dst:
        src.backup(dst)
    return home


def local_cluster(workers: int, api_url: str, threads_per_worker: int = 1):
    """A LocalCluster as the command starts one: workers forked from this process's fork server
    (started here as ``taxi-hpo run`` starts it; a spawned worker imports the trial code itself,
    ~4 CPU-s), the preloads, the API's URL in the workers' environment. The nanny's
    OMP_NUM_THREADS is taken out of this process at once. Returns (the start, its address)."""
    from taxi_hpo import environ
    from taxi_hpo.cluster import ClusterSpec
    from taxi_hpo.cluster.spec import THREAD_ENV
    from taxi_hpo.flows import warm

    warm.start_fork_server(api_url, threads_per_worker)
    saved = {name: os.environ.get(name) for name in THREAD_ENV}
    start = ClusterSpec(workers=workers, threads_per_worker=threads_per_worker).start_local(
        {"PREFECT_API_URL": api_url}
    )
    address = start.address()
    environ.restore(saved)
    return start, address


class DaskProcesses:
    """A ``dask scheduler`` on loopback and ``dask worker`` processes that come and go."""

    def __init__(self, tmp: Path, api_url: str):
        self.tmp, self.procs = tmp, {}
        self.env = {**os.environ, "PREFECT_API_URL": api_url, "OMP_NUM_THREADS": "1"}
        info = tmp / "scheduler.json"
        self.procs["scheduler"] = subprocess.Popen(
            [
                str(BIN / "dask"),
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--dashboard-address",
                ":0",
                "--scheduler-file",
                str(info),
            ],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: info.exists() and info.stat().st_size > 0, 60, "the scheduler file")
        self.address = json.loads(info.read_text())["address"]
        import distributed

        self.client = distributed.Client(self.address, set_as_default=False, timeout=30)

    def workers(self) -> dict:
        """The scheduler's view of its workers: ``{address: info}`` (info has ``name``, ``status``)."""
        return self.client.scheduler_info(n_workers=-1)["workers"]

    def address_of(self, name: str) -> str | None:
        return next((a for a, w in self.workers().items() if w.get("name") == name), None)

    def worker(self, name: str) -> str:
        """Start a worker named ``name``; returns its address once the scheduler knows it."""
        self.procs[name] = subprocess.Popen(
            [
                str(BIN / "dask"),
                "worker",
                self.address,
                "--name",
                name,
                "--nthreads",
                "1",
                "--no-dashboard",
                "--local-directory",
                str(self.tmp / name),
            ],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return wait_for(lambda: self.address_of(name), 60, f"worker {name}")

    def pid(self, name: str) -> int:
        """The worker process's pid (the nanny's child), as trial runs' worker tags carry it."""
        addr = self.address_of(name)
        return self.client.run(os.getpid, workers=[addr])[addr]

    def close(self) -> None:
        """Workers first, then the scheduler, each once the one before has gone: a worker stopped
        beside its scheduler spends seconds reconnecting to it (8.2 s for two; 0.4 s in order)."""
        self.client.close()
        workers = [p for name, p in self.procs.items() if name != "scheduler"]
        for group in (workers, [self.procs["scheduler"]]):
            for proc in group:
                proc.terminate()
            for proc in group:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


# -- processes ----------------------------------------------------------------------------------


def alive(pids) -> list[int]:
    """Those of ``pids`` still running (a zombie is not)."""
    import psutil

    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def wait_gone(pids, what: str, timeout: float = 60) -> None:
    """Wait (generously) until every process in ``pids`` has exited."""
    wait_for(lambda: not alive(pids), timeout, f"{what} to exit (still alive: {alive(pids)})", interval=0.05)


def worker_processes(proc, forked_only: bool = False) -> list[int]:
    """The Dask worker processes under a :func:`start_cli` process: spawned ones, or forks of the
    fork server (a child of the server, whose command line it shares); ``forked_only``: the forks."""
    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for child in children:
        try:
            command = " ".join(child.cmdline())
            forked = "multiprocessing.forkserver" in command and child.ppid() != proc.pid
            if forked or ("spawn_main" in command and not forked_only):
                out.append(child.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def freeze_running_trial(db: Path, timeout: float = 120, where=lambda trial, pid: True) -> tuple[str, int]:
    """(trial id, worker pid) of a trial whose worker is now stopped (SIGSTOP) while the trial's run
    is open: the trial provably runs there and cannot end until SIGCONT (or the worker is killed).
    ``where(trial, pid)`` picks which trials qualify."""
    import signal

    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        candidates = wait_for(
            lambda: [(t, p) for t, p in running_trials(db) if where(t, p)],
            max(left, 0),
            "a running trial to freeze",
            interval=0.02,
        )
        for trial, pid in candidates:
            os.kill(pid, signal.SIGSTOP)
            if (trial, pid) in running_trials(db):
                return trial, pid
            os.kill(pid, signal.SIGCONT)  # its trial ended in between: try another
