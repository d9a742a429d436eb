"""The MLflow tracking server unreachable mid-search: trials wait and retry, none lost.

The outage is event-driven: a reverse proxy in front of a real `mlflow server` stops answering
(each request's connection is closed unanswered, as a server that went away) until the search
has been refused a number of times, then answers again at once; no sleep decides the test.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from helpers import finish, free_port, start_cli, wait_for

pytestmark = pytest.mark.integration


class MlflowServer:
    """A real `mlflow server` (sqlite backend, artifacts served through it) that can be stopped."""

    def __init__(self, root):
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.args = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--backend-store-uri",
            f"sqlite:///{root / 'server.db'}",
            "--artifacts-destination",
            str(root / "server-artifacts"),
            "--workers",
            "1",
        ]
        self.log = open(root / "mlflow-server.log", "a")  # noqa: SIM115 - the server writes to it until stop()
        self.proc = None

    def start(self) -> None:
        from taxi_hpo.tracking.store import seed_sqlite_store

        seed_sqlite_store(self.args[self.args.index("--backend-store-uri") + 1])  # migrated: see there
        # as cluster/local/start-mlflow.sh: no GenAI job consumers (7 processes importing MLflow)
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen(
            self.args, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
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
            try:  # uvicorn waits for open connections: 8 s after a search, nothing to keep here
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class Outage(http.server.ThreadingHTTPServer):
    """A reverse proxy to a tracking server that can go dark: while ``down``, every request's
    connection is closed unanswered (nothing reaches the server, so no write happens twice)."""

    daemon_threads = True

    def __init__(self, backend_port: int):
        self.backend_port = backend_port
        self.down = threading.Event()
        self.refused = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", free_port()), _ProxyHandler)
        self.uri = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _forward(self):
        if self.server.down.is_set():
            with self.server.lock:
                self.server.refused += 1
            self.close_connection = True
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        backend = http.client.HTTPConnection("127.0.0.1", self.server.backend_port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
        backend.request(self.command, self.path, body=body, headers=headers)
        resp = backend.getresponse()
        payload = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length", "keep-alive"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        backend.close()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """One server for the module; each test searches in an experiment of its own name."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()


def test_tracking_server_outage_loses_no_trial(prefect_api_url, data_dir, workdir, mlflow_server):
    outage = Outage(mlflow_server.port)
    proc = start_cli(
        workdir,
        prefect_api_url,
        "--data-dir",
        str(data_dir),
        "--trials",
        "6",
        "--workers",
        "2",
        "--rounds",
        "10",
        "--max-depth",
        "8",
        "--no-register",
        "--no-report",
        "--experiment",
        "outage",
        "--tracking-uri",
        outage.uri,
    )
    client = MlflowClient(mlflow_server.uri)  # the test itself reads the server directly

    def finished_trials():
        experiment = client.get_experiment_by_name("outage")
        if experiment is None:  # not created yet
            return []
        runs = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'")
        return [r for r in runs if "trial_id" in r.data.tags]

    wait_for(finished_trials, 180, "a finished trial")
    outage.down.set()
    # Dark until the search has run into it again and again (its retries back off: 0.5, 1, 2 s ...).
    wait_for(lambda: outage.refused >= 6, 120, "six refused requests")
    assert proc.poll() is None, "the search must wait for the store, not give up"
    outage.down.clear()
    summary = finish(proc)
    outage.shutdown()
    assert summary["experiment_id"] == client.get_experiment_by_name("outage").experiment_id
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
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api_url,
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "false",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "taxi_hpo.cli",
            "run",
            "--data-dir",
            str(data_dir),
            "--trials",
            "2",
            "--rounds",
            "3",
            "--max-depth",
            "5",
            "--no-register",
            "--no-report",
            "--experiment",
            "json-stdout",
            "--tracking-uri",
            mlflow_server.uri,
            "--json",
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)  # the whole of it
    assert summary["trials_done"] == 2 and summary["mlflow_ui"].startswith(mlflow_server.uri)
    assert "View run" in proc.stderr  # it was printed, on the other stream


def test_an_outage_longer_than_the_patience_stops_the_search_in_one_line_and_resume_runs_the_rest(
    prefect_api_url, data_dir, workdir, mlflow_server
):
    """Dark for good once a trial has finished, with the wait cut to 1.5 s (the default 31.5 s
    is the same code, longer): the command ends with one line naming the server, the setting and
    the resume command, leaves no process behind; once the server answers, that resume runs the
    missing trials, each one FINISHED once, and closes what the outage left RUNNING."""
    outage = Outage(mlflow_server.port)
    env = {**os.environ, "TAXI_HPO_TRACKING_PATIENCE_S": "1.5"}
    small = ["--workers", "2", "--rounds", "10", "--max-depth", "8", "--no-register", "--no-report"]
    proc = start_cli(
        workdir,
        prefect_api_url,
        "--data-dir",
        str(data_dir),
        "--trials",
        "6",
        *small,
        "--experiment",
        "long-outage",
        "--tracking-uri",
        outage.uri,
        env=env,
    )
    client = MlflowClient(mlflow_server.uri)

    def trial_runs(status: str):
        experiment = client.get_experiment_by_name("long-outage")
        if experiment is None:
            return []
        runs = client.search_runs([experiment.experiment_id], f"attributes.status = '{status}'")
        return [r for r in runs if "trial_id" in r.data.tags]

    wait_for(lambda: trial_runs("FINISHED"), 180, "a finished trial")
    outage.down.set()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and out == "", err[-3000:]
    last = err.strip().splitlines()[-1]
    # One line from the command itself (Prefect logs each failed trial, as for any failed trial).
    assert err.count("taxi-hpo: error:") == 1 and "taxi_hpo/cli" not in err, err[-3000:]
    assert "WARNING | urllib3" not in err, err[-3000:]  # no warning per refused request
    (parent,) = re.findall(r"taxi-hpo run --resume (\w+) --tracking-uri " + re.escape(outage.uri), last)
    assert last.startswith(
        f"taxi-hpo: error: the MLflow tracking server {outage.uri} did not answer for 1.5 s"
    )
    assert "TAXI_HPO_TRACKING_PATIENCE_S" in last
    assert client.get_run(parent).info.status == "RUNNING"  # nothing could be written: as it was
    done_before = {r.data.tags["trial_id"] for r in trial_runs("FINISHED")}
    assert len(done_before) < 6

    outage.down.clear()
    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "taxi_hpo.cli",
            "run",
            "--resume",
            parent,
            "--tracking-uri",
            outage.uri,
            "--json",
        ],
        cwd=workdir,
        env={**env, "PREFECT_API_URL": prefect_api_url},
        capture_output=True,
        text=True,
        timeout=300,
    )
    outage.shutdown()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["parent_run_id"] == parent and summary["trials_done"] == 6
    finished = sorted(int(r.data.tags["trial_id"]) for r in trial_runs("FINISHED"))
    assert finished == list(range(6))
    assert trial_runs("RUNNING") == [] and client.get_run(parent).info.status == "FINISHED"
