"""The UIs, in a real browser: headless Chromium from Debian's packages, driven by Playwright.

A search runs against a real Prefect server (with its UI) and a real MLflow tracking server;
then the test looks where a person would: the MLflow runs table (the search and its trial
runs), the parent run's report artifact, and the Prefect UI's flow run with its ``trial-N``
task runs and the workers' log lines. With ``TAXI_HPO_SCREENSHOTS=DIR`` (``make screenshots``)
the pages are saved there as PNGs: the README's pictures of the UIs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from helpers import free_port, migrated_prefect_home

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As root in a sandbox without a network: no sandbox, no GPU, no calls home.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
BIN = Path(sys.executable).parent
SHOTS = os.environ.get("TAXI_HPO_SCREENSHOTS")


def _wait_http(url: str, proc: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        assert proc.poll() is None, f"{proc.args[0]} exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {seconds} s")


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def chromium_path() -> str:
    if not Path(CHROMIUM).exists():
        message = "Debian's chromium is not installed: apt-get install chromium (.ci/run does)"
        if os.environ.get("TAXI_HPO_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture
def services(tmp_path, chromium_path, prefect_api_url):
    """A Prefect server with its UI and an MLflow tracking server, on free loopback ports.

    Their databases start migrated, as a user's do after the first start (the migrations are
    not what this test looks at, and cost ~12 s of a 2-core machine): Prefect's a copy of the
    session's API server's, MLflow's seeded as ``taxi-hpo run`` seeds a new store."""
    from taxi_hpo.tracking.store import seed_sqlite_store

    prefect_port, mlflow_port = free_port(), free_port()
    migrated_prefect_home(tmp_path / "prefect")
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{prefect_port}/api",
        "PATH": f"{BIN}:{os.environ['PATH']}",
        # as cluster/local/start-mlflow.sh: no GenAI job consumers (7 processes importing MLflow)
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    env.pop("PREFECT_API_URL", None)
    db = tmp_path / "mlflow.db"
    seed_sqlite_store(f"sqlite:///{db}")
    procs = [
        subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
            env=env,
            cwd=tmp_path,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{db}",
                "--host",
                "127.0.0.1",
                "--port",
                str(mlflow_port),
                "--workers",
                "1",
            ],
            env=env,
            cwd=tmp_path,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        _wait_http(f"http://127.0.0.1:{prefect_port}/api/health", procs[0])
        _wait_http(f"http://127.0.0.1:{mlflow_port}/health", procs[1])
        yield {
            "prefect": f"http://127.0.0.1:{prefect_port}",
            "mlflow": f"http://127.0.0.1:{mlflow_port}",
            "db": f"sqlite:///{db}",
            "env": env,
        }
    finally:
        for proc in procs:
            _stop(proc)


def _shot(page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / name))


def test_the_search_in_the_mlflow_and_prefect_uis(services, data_dir, tmp_path, chromium_path):
    from playwright.sync_api import sync_playwright

    env = {**services["env"], "PREFECT_API_URL": f"{services['prefect']}/api"}
    proc = subprocess.run(
        [
            str(BIN / "taxi-hpo"),
            "run",
            "--data-dir",
            str(data_dir),
            "--trials",
            "6",
            "--rounds",
            "8",
            "--max-depth",
            "8",
            "--prune",
            "asha",
            "--tracking-uri",
            services["mlflow"],
            "--max-rmse",
            "10",
            "--json",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = json.loads(proc.stdout)
    from mlflow.tracking import MlflowClient

    flow_run_id = MlflowClient(services["mlflow"]).get_run(s["parent_run_id"]).data.tags["flow_run_id"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 860})
        page.set_default_timeout(30_000)

        # MLflow: the experiment opens on its runs table (not the GenAI overview); the search's
        # row expands into its trial runs and the baseline.
        assert s["mlflow_ui"].startswith(services["mlflow"])  # the link the run printed
        page.goto(s["mlflow_ui"].split("/runs/")[0] + "/runs?workflowType=machine_learning")
        page.get_by_role("link", name="search").first.wait_for()
        assert "No data available" not in page.inner_text("body")
        page.locator(f"[row-id='{s['parent_run_id']}'] [col-id='attributes.`Run Name`'] button").first.click()
        for name in ["linear-regression", *(f"trial-{i:04d}" for i in range(6))]:
            page.get_by_role("link", name=name, exact=True).first.wait_for()
        _close_assistant(page)
        _shot(page, "mlflow-runs.png")

        # The parent run's report: the HTML page under report/ previews in the artifact view.
        page.goto(s["mlflow_ui"].replace("?", "/artifacts?"))
        page.get_by_text("report", exact=True).first.click()
        for name in ("best_so_far.png", "params.png", "timeline.png", "summary.json"):
            page.get_by_text(name, exact=True).first.wait_for()
        page.get_by_text("report.html", exact=True).first.click()
        frame = _frame_with(page, "Best trials")
        text = frame.inner_text("body")
        assert f"{s['best_rmse']:.4f}" in text and "6 run of 6 planned" in text, text
        assert frame.locator("img").count() == 3
        _close_assistant(page)
        _shot(page, "mlflow-report.png")

        # Prefect: the search's flow run, completed, with its trial task runs and their log lines.
        page.goto(f"{services['prefect']}/runs/flow-run/{flow_run_id}")
        page.get_by_text("Completed").first.wait_for()
        page.get_by_text("rmse_valid").first.wait_for()
        text = page.inner_text("body")
        assert sum(f"trial {i} on " in text for i in range(6)) == 6  # each worker's trial line
        # six trial-N task runs beside the preprocessor log, the baseline (its logging and its
        # cached fit) and the registration (the graph that names them is a canvas; its header
        # counts them)
        assert "10 Task runs" in text
        _shot(page, "prefect-flow-run.png")
        browser.close()


def _close_assistant(page) -> None:
    """MLflow 3's assistant panel takes a third of the page; close it when it is open."""
    close = page.locator("button[aria-label='Close']")
    if close.count():
        close.first.click()
        page.wait_for_timeout(300)


def _frame_with(page, text: str, seconds: float = 30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        for frame in page.frames:
            try:
                if text in frame.inner_text("body", timeout=1000):
                    return frame
            except Exception:  # noqa: BLE001 - a frame still loading
                continue
        time.sleep(0.3)
    raise AssertionError(f"no frame shows {text!r}")
