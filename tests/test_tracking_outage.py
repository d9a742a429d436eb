"""The MLflow tracking server unreachable for ~20 s mid-search: trials wait and retry, none lost."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from test_faults import finish, start_cli, wait_for

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` (sqlite backend, artifacts served through it) that can be stopped."""

    def __init__(self, root):
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                     "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
                     "--artifacts-destination", str(root / "server-artifacts"), "--workers", "1"]
        self.log = open(root / "mlflow-server.log", "a")
        self.proc = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._healthy, 90, "mlflow server health")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.uri + "/health", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def mlflow_server(workdir):
    server = MlflowServer(workdir)
    server.start()
    yield server
    server.stop()


def test_tracking_server_outage_loses_no_trial(prefect_api_url, data_dir, workdir, mlflow_server):
    proc = start_cli(workdir, prefect_api_url, "--data-dir", str(data_dir), "--trials", "6", "--workers", "2",
                     "--rounds", "30", "--max-depth", "10", "--no-register", "--tracking-uri", mlflow_server.uri)
    client = MlflowClient(mlflow_server.uri)

    def finished_trials():
        try:
            runs = client.search_runs(["1"], "attributes.status = 'FINISHED'")
        except Exception:  # noqa: BLE001 - not created yet
            return []
        return [r for r in runs if "trial_id" in r.data.tags]

    wait_for(finished_trials, 180, "a finished trial")
    mlflow_server.stop()
    time.sleep(20)
    assert proc.poll() is None, "the search must wait for the store, not give up"
    mlflow_server.start()
    summary = finish(proc)
    assert (summary["trials_done"], summary["trials_failed"]) == (6, 0)
    finished = sorted(int(r.data.tags["trial_id"]) for r in finished_trials())
    assert finished == list(range(6))
    running = client.search_runs([summary["experiment_id"]], "attributes.status = 'RUNNING'")
    assert running == []
    assert summary["preprocessor_artifacts"] == 1
    for run in finished_trials():
        assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/booster.ubj"]


def test_json_is_all_of_stdout_with_a_tracking_server(prefect_api_url, data_dir, workdir, mlflow_server):
    """MLflow prints "View run ... at" to stdout for each run it ends on a tracking server, from
    the flow and from the workers; under --json stdout holds the object alone. The printing is
    left on here, so what keeps stdout clean is the redirection, not MLflow's switch."""
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url, "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "false"}
    proc = subprocess.run([sys.executable, "-m", "taxi_hpo.cli", "run", "--data-dir", str(data_dir), "--trials", "2",
                           "--rounds", "3", "--max-depth", "5", "--no-register", "--tracking-uri", mlflow_server.uri,
                           "--json"], cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)  # the whole of it
    assert summary["trials_done"] == 2 and summary["mlflow_ui"].startswith(mlflow_server.uri)
    assert "View run" in proc.stderr  # it was printed, on the other stream
