"""The shared Prefect API: queued log lines reach it when flushed, not seconds later or never."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from helpers import migrated_prefect_home, wait_for

PROBE = textwrap.dedent("""
    import sys
    from prefect import flow, get_run_logger
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.context import FlowRunContext
    from taxi_hpo.prefect_api import flush_to_api

    @flow
    def probe(flush: bool) -> int:
        get_run_logger().info("queued marker line")
        if flush:
            assert flush_to_api()
        run_id = FlowRunContext.get().flow_run.id
        with get_client(sync_client=True) as client:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        return sum(log.message == "queued marker line" for log in logs)

    print("marker lines in the API:", probe(sys.argv[1] == "flush"))
""")


@pytest.mark.integration
def test_flush_to_api_sends_queued_lines_before_returning(prefect_api_url, tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    # A batch interval far longer than the probe: without a flush the line is still queued.
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url, "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "60"}

    def lines_seen(mode: str) -> str:
        proc = subprocess.run(
            [sys.executable, str(script), mode],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout.strip().splitlines()[-1]

    assert lines_seen("hold") == "marker lines in the API: 0"
    assert lines_seen("flush") == "marker lines in the API: 1"


SERVER_HOLDER = textwrap.dedent("""
    import signal, sys, time
    from taxi_hpo import prefect_api
    # A shell that starts a job in the background makes it ignore SIGINT, and children inherit that.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    url = prefect_api.start_early()
    print(prefect_api._EARLY["server"].process.pid, url, flush=True)
    with prefect_api.prefect_api() as ready:
        assert ready == url
        print("ready", flush=True)
        time.sleep(600)
""")


def _health(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


#: How long a server may take to go. Not a speed requirement: a server that outlives its
#: process stays for good, so any generous bound tells the two apart.
GONE_WITHIN_S = 120


@pytest.mark.integration
@pytest.mark.parametrize("how", ["Ctrl-C", "SIGKILL"])
def test_temporary_server_serves_and_ends_with_its_process(tmp_path, how, prefect_api_url):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(migrated_prefect_home(tmp_path / "prefect"))
    holder = subprocess.Popen(
        [sys.executable, "-c", SERVER_HOLDER],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        pid, url = holder.stdout.readline().split()
        assert holder.stdout.readline().strip() == "ready", holder.stderr.read()[-2000:]
        assert url.startswith("http://127.0.0.1:") and int(url.split(":")[2].split("/")[0]) != 8787
        assert _health(url)
        if how == "Ctrl-C":
            holder.send_signal(signal.SIGINT)  # the context exits and stops the server
        else:
            holder.kill()  # no cleanup code runs: the parent-death signal ends the server
        holder.wait(timeout=60)
        wait_for(lambda: _gone(int(pid)), GONE_WITHIN_S, f"server {pid} to end with its process ({how})")
        assert not _health(url)
    finally:
        if holder.poll() is None:
            holder.kill()


@pytest.mark.integration
def test_a_run_without_an_api_starts_exactly_one_server(data_dir, tmp_path, prefect_api_url):
    """`taxi-hpo run` with no PREFECT_API_URL: one temporary server for the flow and its workers
    (a worker without the URL would start its own), and none left when the run ends; nothing of
    the server on the run's terminal, and its log file gone with it. The runs stay in the
    default Prefect database (PREFECT_HOME's), which ``prefect server start`` shows afterwards;
    the terminal shows Prefect's warnings only (the command's own console level, not the suite's)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PREFECT_API_URL", "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL")
    }
    env["PREFECT_HOME"] = str(migrated_prefect_home(tmp_path / "prefect"))
    searches_before = _searches_in(Path(env["PREFECT_HOME"]) / "prefect.db")
    env["TMPDIR"] = str(tmp_path / "tmp")
    (tmp_path / "tmp").mkdir()
    cli = Path(sys.executable).with_name("taxi-hpo")
    run = subprocess.Popen(
        [
            str(cli),
            "run",
            "--data-dir",
            str(data_dir),
            "--trials",
            "2",
            "--workers",
            "2",
            "--rounds",
            "5",
            "--max-depth",
            "6",
            "--no-register",
            "--no-report",
            "--json",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    servers_seen: set[int] = set()
    while run.poll() is None:
        try:
            for child in psutil.Process(run.pid).children(recursive=True):
                try:
                    if any("create_app" in part for part in child.cmdline()):
                        servers_seen.add(child.pid)
                except psutil.Error:
                    pass
        except psutil.Error:
            break
        time.sleep(0.2)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 0, err[-2000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["trials_done"] == 2
    # its timeline: the server it started was up before the flow began
    assert summary["timeline"]["prefect_api_ready"] < summary["timeline"]["flow_started"]
    assert len(servers_seen) == 1, servers_seen
    wait_for(lambda: all(_gone(pid) for pid in servers_seen), GONE_WITHIN_S, f"servers {servers_seen} to end")
    assert "Traceback" not in err and "uvicorn" not in err, err[-2000:]
    assert not list((tmp_path / "tmp").glob("taxi-hpo-prefect-server-*")), "the server's log was left"
    assert "| INFO" not in err, err[-2000:]  # Prefect's console default is INFO: a line per run and task
    new = {
        k: v
        for k, v in _searches_in(Path(env["PREFECT_HOME"]) / "prefect.db").items()
        if k not in searches_before
    }
    assert list(new.values()) == ["COMPLETED"], new


def _searches_in(db: Path) -> dict[str, str]:
    """The ``taxi-hpo-search`` flow runs a Prefect database holds: id -> state type."""
    import sqlite3

    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT fr.id, fr.state_type FROM flow_run fr JOIN flow f ON f.id = fr.flow_id "
            "WHERE f.name = 'taxi-hpo-search'"
        ).fetchall()
    return dict(rows)


def test_the_server_is_launched_before_prefect_is_imported_only_where_no_url_can_be_set(
    tmp_path, monkeypatch
):
    """`taxi-hpo run` launches its temporary server before it imports Prefect (~1 s) only where
    no source of Prefect's settings can name an API URL; anything else waits for Prefect's own
    settings (the Zoomcamp way, `prefect config set PREFECT_API_URL=...`, is a profile)."""
    from taxi_hpo.prefect_server import surely_unconfigured

    for name in ("PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH"):
        monkeypatch.delenv(name, raising=False)
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("PREFECT_HOME", str(home))
    assert surely_unconfigured(work)  # no profiles file at all
    profiles = home / "profiles.toml"
    profiles.write_text('active = "local"\n[profiles.local]\nPREFECT_API_URL = "http://127.0.0.1:4200/api"\n')
    assert not surely_unconfigured(work)
    monkeypatch.setenv("PREFECT_PROFILE", "ephemeral")  # another profile, without a URL
    assert surely_unconfigured(work)
    profiles.write_text("active = [unclosed")
    assert not surely_unconfigured(work)  # unreadable: Prefect's settings decide
    profiles.unlink()
    for name, text in ((".env", "PREFECT_LOGGING_LEVEL=DEBUG\n"), ("prefect.toml", "")):
        (work / name).write_text(text)
        assert not surely_unconfigured(work)
        (work / name).unlink()
    (work / "pyproject.toml").write_text("[tool.prefect]\napi.url = 'http://127.0.0.1:4200/api'\n")
    assert not surely_unconfigured(work)
    (work / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert surely_unconfigured(work)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert not surely_unconfigured(work)


@pytest.mark.integration
def test_a_temporary_server_that_cannot_start_is_one_line_naming_its_log(data_dir, tmp_path):
    """A database the server cannot reach: uvicorn exits 3, as for a taken port, but another port
    does not help (it used to relaunch until the 60 s timeout); the run says why in one line,
    keeps the server's log for the user and leaves no process behind."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    env["TMPDIR"] = str(tmp_path / "tmp")
    (tmp_path / "tmp").mkdir()
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = f"postgresql+asyncpg://u:p@127.0.0.1:{closed}/prefect"
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "taxi_hpo.cli", "run", "--data-dir", str(data_dir), "--trials", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - started
    assert run.returncode == 2, run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert lines[0].startswith("taxi-hpo: error: the temporary Prefect API server exited with code 3 (")
    assert "ConnectionRefusedError" in lines[0] and "PREFECT_API_URL" in lines[0]
    logs = list((tmp_path / "tmp").glob("taxi-hpo-prefect-server-*.log"))
    assert len(logs) == 1 and str(logs[0]) in lines[0]
    assert "Application startup failed" in logs[0].read_text()
    assert took < 55, f"{took:.0f} s: relaunched until the start-up timeout instead of failing"
    # the server and the cluster's workers all run in the run's folder
    left = [p.info for p in psutil.process_iter(["pid", "cwd", "cmdline"]) if p.info["cwd"] == str(tmp_path)]
    assert not left, left


def test_drain_chatter_is_dropped_and_other_service_warnings_kept(caplog):
    from taxi_hpo.prefect_api import quiet_drain_warnings

    quiet_drain_warnings()
    quiet_drain_warnings()  # idempotent: one filter, not two
    service = logging.getLogger("EventsWorker")
    assert len(service.filters) == 1
    with caplog.at_level(logging.WARNING):
        service.warning("Still processing items: 1 items remaining...")
        service.warning("Service %r queue is full (%d items), dropping item", "EventsWorker", 10)
    assert [r.getMessage() for r in caplog.records] == [
        "Service 'EventsWorker' queue is full (10 items), dropping item"
    ]


# Both caches patch Prefect in the process that runs them: a fresh process each, so the rest of
# the suite runs on Prefect as shipped.
CACHES = textwrap.dedent("""
    import json, sys
    import distributed
    from prefect import flow, task
    from prefect.context import SettingsContext
    from prefect.settings import PREFECT_TASKS_DEFAULT_RETRIES, temporary_settings
    from prefect_dask import DaskTaskRunner
    from taxi_hpo.prefect_api import cache_context_hydration, cache_settings_serialization

    cache_settings_serialization()

    @task(cache_policy=None)
    def seen_retries() -> int:
        return PREFECT_TASKS_DEFAULT_RETRIES.value()

    def worker_setup():
        cache_context_hydration()

    def run(address: str, retries: int) -> list:
        @flow(task_runner=DaskTaskRunner(address=address))
        def probe() -> list:
            first = SettingsContext.get().serialize()
            assert SettingsContext.get().serialize() is first  # cached while the settings stay
            return [f.result() for f in [seen_retries.submit() for _ in range(3)]]
        with temporary_settings(updates={PREFECT_TASKS_DEFAULT_RETRIES: retries}):
            return probe()

    if __name__ == "__main__":
        with distributed.LocalCluster(
                n_workers=1, threads_per_worker=2, dashboard_address=":0"
        ) as cluster, distributed.Client(cluster) as client:
            client.run(worker_setup)
            # Two flows whose settings differ: each one's tasks see its own, cache or not.
            print(json.dumps([run(cluster.scheduler_address, 3), run(cluster.scheduler_address, 5)]))
""")


@pytest.mark.integration
def test_cached_settings_reach_each_task_as_the_flow_set_them(prefect_api_url, tmp_path):
    script = tmp_path / "caches.py"
    script.write_text(CACHES)
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url}
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [[3, 3, 3], [5, 5, 5]]


def test_cached_serialization_equals_prefects_own():
    from prefect.context import SettingsContext
    from prefect.settings import PREFECT_TASKS_DEFAULT_RETRIES, temporary_settings

    from taxi_hpo import prefect_api

    with temporary_settings(updates={PREFECT_TASKS_DEFAULT_RETRIES: 7}):
        context = SettingsContext.get()
        original = type(context).serialize
        expected = original(context)
        prefect_api.cache_settings_serialization()
        try:
            assert type(context).serialize(context) == expected
            assert type(context).serialize(context) is type(context).serialize(context)
            assert expected["settings"]["tasks"]["default_retries"] == 7
        finally:
            SettingsContext.serialize = original
            prefect_api._SETTINGS_CACHE.clear()


def test_a_flow_run_started_without_heartbeats_beats_none_and_others_still_do():
    """The preprocess subflow's end does not wait for a heartbeat thread (see without_heartbeats);
    the flow engine reads the setting when it starts a run, so that is what is asserted."""
    from prefect import flow
    from prefect.flow_engine import FlowRunEngine

    from taxi_hpo.prefect_api import without_heartbeats

    @flow
    def nothing():
        return None

    with without_heartbeats():
        assert FlowRunEngine(flow=nothing).heartbeat_seconds is None
    assert FlowRunEngine(flow=nothing).heartbeat_seconds is not None  # the search keeps its own


def test_a_flow_run_ends_without_waiting_for_its_heartbeat_thread():
    """unjoined_heartbeats: leaving Prefect's heartbeat block (a flow run's end) returns while the
    heartbeat thread still sleeps in its one-second step (joined, it would be gone), and the
    thread ends by itself at its next step without beating again. Driven by an engine that
    counts its beats, so the order is the same on a loaded machine."""
    import threading

    import prefect.flow_engine

    from taxi_hpo.prefect_api import unjoined_heartbeats

    class Engine:
        heartbeat_seconds, flow_run, logger = 30, None, logging.getLogger("test-heartbeats")

        def __init__(self):
            self.beats, self.beat = 0, threading.Event()

        def _build_heartbeat_event_template(self):
            return None, None

        def _emit_flow_run_heartbeat(self, resource, related):
            self.beats += 1
            self.beat.set()

    unjoined_heartbeats()
    engine, before = Engine(), set(threading.enumerate())
    with prefect.flow_engine._send_heartbeats(engine):
        assert engine.beat.wait(10), "no heartbeat"
        (thread,) = set(threading.enumerate()) - before
    assert thread.is_alive(), "the end of the run waited for its heartbeat thread"
    wait_for(lambda: not thread.is_alive(), 10, "the heartbeat thread to end by itself")
    assert engine.beats == 1
