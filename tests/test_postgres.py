"""PostgreSQL behind MLflow and Prefect, for real: what README and cluster/README advise past a
few workers.

A throwaway PostgreSQL cluster (Debian's server binaries, ``initdb`` + ``pg_ctl``, password
authentication) listens on a free loopback port with databases ``mlflow`` and ``prefect``; the
repository's own ``cluster/local/start-mlflow.sh`` and ``start-prefect.sh`` start the servers on
it (``MLFLOW_BACKEND_URI=postgresql://...``, ``PREFECT_DB_URL=postgresql+asyncpg://...``), and
``taxi-hpo run`` searches through them. The checks read PostgreSQL's own tables, and no sqlite
file may appear anywhere.

Without PostgreSQL's binaries the test skips with one line; ``.ci/run`` installs them and sets
``TAXI_HPO_REQUIRE_POSTGRES=1``, which makes their absence a failure.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from helpers import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "cluster" / "local"
VENV_BIN = Path(sys.executable).parent
USER = "taxi_hpo"  # PostgreSQL's superuser in the throwaway cluster
TRIALS = 4


def postgres_bin() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: Debian keeps them off PATH, per major version."""
    debian = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    debian.sort(key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)
    initdb = shutil.which("initdb")
    for folder in [*reversed(debian), *([Path(initdb).resolve().parent] if initdb else [])]:
        if (folder / "pg_ctl").is_file():
            return folder
    return None


@dataclass
class Postgres:
    bin: Path
    root: Path  # data/, the socket and the server's log
    owner: str | None  # the user the server runs as when we are root (PostgreSQL refuses root)
    port: int
    password: str

    def as_owner(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = ["runuser", "-u", self.owner, "--", *argv] if self.owner else list(argv)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root)

    def url(self, db: str, driver: str = "postgresql") -> str:
        return f"{driver}://{USER}:{self.password}@127.0.0.1:{self.port}/{db}"

    def query(self, db: str, sql: str, *params) -> list[tuple]:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=USER, password=self.password, dbname=db
        ) as conn:
            return conn.execute(sql, params or None).fetchall()

    def postmaster_pid(self) -> int | None:
        pidfile = self.root / "data" / "postmaster.pid"
        return int(pidfile.read_text().split()[0]) if pidfile.is_file() else None


@pytest.fixture
def postgres():
    folder = postgres_bin()
    if folder is None:
        message = (
            "PostgreSQL's server binaries (initdb, pg_ctl) are not under /usr/lib/postgresql/*/bin nor on "
            "PATH: apt-get install postgresql (.ci/run does)"
        )
        if os.environ.get("TAXI_HPO_REQUIRE_POSTGRES"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        import psycopg  # noqa: F401  MLflow's driver for postgresql:// with SQLAlchemy 2.1
    except ImportError:
        pytest.fail(
            "psycopg is not installed: pip install -e '.[test]' (the driver of MLflow's postgresql:// URIs)"
        )
    owner = None
    if os.geteuid() == 0:
        owner = "postgres" if _user_exists("postgres") else "nobody"
    # Not under pytest's tmp_path: its root is private to us, and the server runs as `owner`.
    root = Path(tempfile.mkdtemp(prefix="taxi-hpo-pg-"))
    pg = Postgres(folder, root, owner, free_port(), secrets.token_hex(12))
    try:
        pwfile = root / "pw"
        pwfile.write_text(pg.password + "\n")
        if owner:
            for path in (root, pwfile):
                shutil.chown(path, owner)
        made = pg.as_owner(
            str(folder / "initdb"),
            "-D",
            str(root / "data"),
            "-U",
            USER,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        pwfile.unlink()
        assert made.returncode == 0, f"initdb failed:\n{made.stdout}{made.stderr}"
        options = f"-p {pg.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        started = pg.as_owner(
            str(folder / "pg_ctl"),
            "start",
            "-D",
            str(root / "data"),
            "-l",
            str(root / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            options,
        )
        assert started.returncode == 0, f"pg_ctl start failed:\n{started.stdout}{started.stderr}" + _tail(
            root / "server.log"
        )
        import psycopg

        with psycopg.connect(
            host="127.0.0.1",
            port=pg.port,
            user=USER,
            password=pg.password,
            dbname="postgres",
            autocommit=True,
        ) as conn:
            for db in ("mlflow", "prefect"):
                conn.execute(f"CREATE DATABASE {db}")
        yield pg
    finally:
        postmaster = pg.postmaster_pid()
        if postmaster:
            pg.as_owner(
                str(folder / "pg_ctl"), "stop", "-D", str(root / "data"), "-m", "fast", "-w", "-t", "60"
            )
        shutil.rmtree(root, ignore_errors=True)
        assert not (postmaster and _alive(postmaster)), f"PostgreSQL (pid {postmaster}) outlived pg_ctl stop"


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _tail(path: Path, lines: int = 20) -> str:
    return "\n" + "\n".join(path.read_text().splitlines()[-lines:]) if path.is_file() else ""


@pytest.fixture
def servers(postgres, tmp_path):
    """MLflow and Prefect started by cluster/local's scripts, both on the PostgreSQL above."""
    run_dir = tmp_path / "run"
    mlflow_port, prefect_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"},
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "TAXI_HPO_RUN_DIR": str(run_dir),
        "PREFECT_HOME": str(run_dir / "prefect"),
        "BIND_HOST": "127.0.0.1",
        "MLFLOW_PORT": str(mlflow_port),
        "PREFECT_PORT": str(prefect_port),
        "MLFLOW_WORKERS": "1",
        "MLFLOW_BACKEND_URI": postgres.url("mlflow"),
        "PREFECT_DB_URL": postgres.url("prefect", "postgresql+asyncpg"),
    }
    starts = {
        name: subprocess.Popen(
            [str(LOCAL / f"start-{name}.sh")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in ("mlflow", "prefect")
    }
    try:
        for name, proc in starts.items():
            out, _ = proc.communicate(timeout=150)
            assert proc.returncode == 0, f"start-{name}.sh failed:\n{out}"
        yield {
            "tracking_uri": f"http://127.0.0.1:{mlflow_port}",
            "api_url": f"http://127.0.0.1:{prefect_port}/api",
            "run_dir": run_dir,
        }
    finally:
        for proc in starts.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        groups = [
            int((run_dir / f"{name}.pid").read_text())
            for name in starts
            if (run_dir / f"{name}.pid").is_file()
        ]
        subprocess.run(
            [str(LOCAL / "stop.sh")], env={**env, "STOP_WAIT_S": "10"}, capture_output=True, timeout=120
        )
        left = [pid for pid in groups if _group_alive(pid)]
        assert not left, f"process groups {left} outlived cluster/local/stop.sh"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_a_search_on_mlflow_and_prefect_backed_by_postgresql(postgres, servers, data_dir, tmp_path):
    client_dir = tmp_path / "client"
    client_dir.mkdir()
    env = {**os.environ, "PREFECT_API_URL": servers["api_url"], "PREFECT_HOME": str(client_dir / "prefect")}
    proc = subprocess.run(
        [
            str(VENV_BIN / "taxi-hpo"),
            "run",
            "--data-dir",
            str(data_dir),
            "--workers",
            "2",
            "--trials",
            str(TRIALS),
            "--rounds",
            "5",
            "--max-depth",
            "6",
            "--max-rmse",
            "10",
            "--no-report",
            "--tracking-uri",
            servers["tracking_uri"],
            "--json",
        ],
        cwd=client_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads(proc.stdout)
    assert (s["trials_done"], s["trials_failed"], s["registered_version"]) == (TRIALS, 0, "1")

    # MLflow's tables in PostgreSQL: the search, its trial runs, their metrics, the registered model.
    parent = s["parent_run_id"]
    assert postgres.query("mlflow", "SELECT name, status FROM runs WHERE run_uuid = %s", parent) == [
        ("search", "FINISHED")
    ]
    trial_runs = postgres.query(
        "mlflow",
        """
        SELECT r.run_uuid, r.status FROM runs r
        JOIN tags p ON p.run_uuid = r.run_uuid AND p.key = 'mlflow.parentRunId' AND p.value = %s
        JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'trial_id'""",
        parent,
    )
    assert sorted(trial_runs) == sorted((t["run_id"], "FINISHED") for t in s["trials"])
    best = postgres.query(
        "mlflow",
        "SELECT value FROM latest_metrics WHERE run_uuid = %s AND key = 'rmse_valid'",
        s["best_run_id"],
    )
    assert best == [(pytest.approx(s["best_rmse"]),)]
    assert postgres.query(
        "mlflow",
        """
        SELECT a.alias, v.version FROM registered_model_aliases a
        JOIN model_versions v ON v.name = a.name AND v.version = a.version
        WHERE a.name = 'nyc-taxi-duration'""",
    ) == [("staging", 1)]

    # Prefect's tables in PostgreSQL: the search's flow run and one completed task run per trial.
    [(flow_run_id,)] = postgres.query(
        "mlflow", "SELECT value FROM tags WHERE run_uuid = %s AND key = 'flow_run_id'", parent
    )
    assert postgres.query(
        "prefect",
        """
        SELECT f.name, r.state_type FROM flow_run r JOIN flow f ON f.id = r.flow_id
        WHERE r.id = %s""",
        flow_run_id,
    ) == [("taxi-hpo-search", "COMPLETED")]
    trials = postgres.query(
        "prefect",
        """
        SELECT name, state_type FROM task_run
        WHERE flow_run_id = %s AND name LIKE 'trial-%%' ORDER BY name""",
        flow_run_id,
    )
    assert trials == [(f"trial-{i}", "COMPLETED") for i in range(TRIALS)]

    # Nothing fell back to sqlite (the scripts' default for MLflow, Prefect's for an unset URL).
    assert not [p for p in tmp_path.rglob("*.db*")], "a sqlite file appeared"
