"""``cluster/local/start-all.sh`` on this one host, as README's "Scaling out" and "Security" say.

With its defaults (listening on 0.0.0.0) it makes the certificates, starts Prefect and MLflow
asking for credentials (here the user's own, from the environment) and a ``tls://`` scheduler
with a worker, and prints the lines a client runs; those lines, as printed, run a search. With
the opt-outs (``ALLOW_PLAINTEXT=1``, ``ALLOW_NO_AUTH=1``) the servers answer anyone, with a
warning each, and no certificate or credentials file is made. ``stop.sh`` ends every process.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import basic_auth, free_port, http_status, migrated_prefect_home, read_env_file, wait_for
from taxi_hpo.cluster import credentials
from taxi_hpo.preflight.remote import MLFLOW_PROBE_PATH

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "cluster" / "local"
VENV_BIN = Path(sys.executable).parent
#: What a user's shell would not have set before following the README.
UNSET = {
    "TLS_DIR",
    "ALLOW_PLAINTEXT",
    "ALLOW_NO_AUTH",
    "BIND_HOST",
    "PREFECT_API_URL",
    *credentials.ENV_NAMES,
}


class Host:
    """This machine as the scripts see it: a run folder with migrated stores (as after a first
    start, ~10 CPU-s of migrations other tests make) and free ports."""

    def __init__(self, root: Path):
        from taxi_hpo.tracking.store import seed_sqlite_store

        self.run_dir = root / "cluster-run"
        migrated_prefect_home(self.run_dir / "prefect")
        seed_sqlite_store(f"sqlite:///{self.run_dir / 'mlflow.db'}")
        self.ports = {
            name: str(free_port("0.0.0.0"))
            for name in ("SCHEDULER_PORT", "DASHBOARD_PORT", "MLFLOW_PORT", "PREFECT_PORT")
        }
        clean = {k: v for k, v in os.environ.items() if k not in UNSET and not k.startswith("DASK_")}
        self.env = {
            **clean,
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
            "TAXI_HPO_RUN_DIR": str(self.run_dir),
            "MLFLOW_WORKERS": "1",
            "STOP_WAIT_S": "10",
            **self.ports,
        }

    def script(self, name: str, *args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(LOCAL / name), *args], env={**self.env, **env}, capture_output=True, text=True, timeout=300
        )

    def groups(self) -> dict[str, int]:
        return {p.stem: int(p.read_text()) for p in self.run_dir.glob("*.pid")}

    def stop(self) -> None:
        """``stop.sh``, then every process group it had pid files for is gone."""
        groups = self.groups()
        self.script("stop.sh")
        for name, pgid in groups.items():
            wait_for(lambda pgid=pgid: not _group_alive(pgid), 30, f"{name} (group {pgid}) to end")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def host(tmp_path):
    h = Host(tmp_path)
    yield h
    h.stop()


def _printed(stdout: str) -> tuple[dict[str, str], list[str], list[str]]:
    """The client's lines start-all.sh printed: the exports, the files to source, the command."""
    exports = dict(re.findall(r"^export (\w+)=(\S+)$", stdout, re.M))
    sources = re.findall(r"^source (\S+)$", stdout, re.M)
    command = re.search(r"^(taxi-hpo run .*)$", stdout.replace("\\\n", " "), re.M)
    assert command, stdout
    return exports, sources, shlex.split(command.group(1))


@pytest.mark.integration
def test_start_all_is_closed_and_its_printed_lines_run_a_search(host, data_dir, tmp_path):
    # The user's own credentials in the environment (the scripts would otherwise make them).
    password, auth = secrets.token_hex(24), f"alice:{secrets.token_hex(24)}"
    given = {
        "MLFLOW_TRACKING_USERNAME": "alice",
        "MLFLOW_TRACKING_PASSWORD": password,
        "PREFECT_API_AUTH_STRING": auth,
    }
    started = host.script("start-all.sh", "1", **given)
    assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
    assert set(host.groups()) == {"prefect", "mlflow", "scheduler", "workers"}
    out = started.stdout + started.stderr
    assert password not in out and auth.split(":")[1] not in out

    # The certificates were made (no TLS_DIR given), the CA key kept here on the head.
    tls = host.run_dir / "tls"
    assert (tls / "ca.pem").is_file() and (tls / "client.yaml").is_file()
    exports, sources, argv = _printed(started.stdout)
    assert exports["DASK_CONFIG"] == str(tls / "client.yaml")
    assert exports["PREFECT_API_URL"].endswith(f":{host.ports['PREFECT_PORT']}/api")
    assert sources == [str(host.run_dir / "mlflow-auth.env"), str(host.run_dir / "prefect-auth.env")]
    # The files clients source hold the credentials given, readable by their owner only.
    sourced = {k: v for f in sources for k, v in read_env_file(Path(f)).items()}
    assert sourced == given
    assert all(oct(Path(f).stat().st_mode & 0o777) == "0o600" for f in sources)
    address = argv[argv.index("--address") + 1]
    tracking_uri = argv[argv.index("--tracking-uri") + 1]
    assert address.startswith("tls://") and address.endswith(f":{host.ports['SCHEDULER_PORT']}")

    # Closed: nothing without the credentials, from anywhere this host is reached.
    assert http_status(tracking_uri + MLFLOW_PROBE_PATH) == 401
    assert http_status(tracking_uri + MLFLOW_PROBE_PATH, basic_auth(f"alice:{password}")) == 200
    assert http_status(exports["PREFECT_API_URL"] + "/admin/version") == 401
    assert http_status(exports["PREFECT_API_URL"] + "/admin/version", basic_auth(auth)) == 200

    # The printed lines, as a client would run them, with the sourced files' credentials.
    client_env = {k: v for k, v in host.env.items() if k not in host.ports and k != "TAXI_HPO_RUN_DIR"}
    client_env.update({**exports, **sourced, "PREFECT_HOME": str(tmp_path / "client-prefect")})
    argv[0] = str(VENV_BIN / "taxi-hpo")
    argv += ["--data-dir", str(data_dir), "--trials", "2", "--rounds", "3", "--max-depth", "4"]
    argv += ["--max-rmse", "100", "--max-inference-time", "1", "--no-report", "--json"]
    (tmp_path / "client").mkdir()
    proc = subprocess.run(
        argv, cwd=tmp_path / "client", env=client_env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert (summary["trials_done"], summary["trials_failed"], summary["registered_version"]) == (2, 0, "1")
    assert summary["tracking_uri"] == tracking_uri and not (tmp_path / "client" / "mlflow.db").exists()
    # In the server's store (the run folder's): the parent's two trial runs.
    with sqlite3.connect(host.run_dir / "mlflow.db") as db:
        trials = db.execute(
            """SELECT COUNT(*) FROM tags p JOIN tags t ON t.run_uuid = p.run_uuid AND t.key = 'trial_id'
            WHERE p.key = 'mlflow.parentRunId' AND p.value = ?""",
            (summary["parent_run_id"],),
        ).fetchone()[0]
    assert trials == 2


@pytest.mark.integration
def test_the_opt_outs_open_each_service_with_a_warning(host):
    started = host.script("start-all.sh", "1", ALLOW_PLAINTEXT="1", ALLOW_NO_AUTH="1")
    assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
    warnings = started.stderr
    assert "MLflow on 0.0.0.0 without credentials (ALLOW_NO_AUTH=1)" in warnings, warnings
    assert "Prefect on 0.0.0.0 without credentials (ALLOW_NO_AUTH=1)" in warnings, warnings
    assert "ALLOW_PLAINTEXT=1" in warnings, warnings
    exports, sources, argv = _printed(started.stdout)
    assert sources == [] and "DASK_CONFIG" not in exports
    assert argv[argv.index("--address") + 1].startswith("tcp://")
    assert not (host.run_dir / "tls").exists()
    assert not {"mlflow-auth.env", "prefect-auth.env"} & {p.name for p in host.run_dir.iterdir()}
    tracking_uri = argv[argv.index("--tracking-uri") + 1]
    assert http_status(tracking_uri + MLFLOW_PROBE_PATH) == 200
    assert http_status(exports["PREFECT_API_URL"] + "/admin/version") == 200
