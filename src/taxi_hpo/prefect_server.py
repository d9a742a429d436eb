"""Prefect's temporary API server as a process of its own, launched without importing Prefect.

Importing Prefect costs this process ~1 s (its settings alone) and its server package 3.4 s; a run
that starts its own server launches it first, as a subprocess that imports what it needs itself,
so its start overlaps the run's own imports (:mod:`taxi_hpo.prefect_api` decides when).
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from pathlib import Path

from taxi_hpo import timeline
from taxi_hpo.errors import PrefectApiError


class TemporaryServer:
    """Prefect's temporary API server, as ``SubprocessASGIServer`` runs it (uvicorn on Prefect's
    ``create_app`` factory, UI off, ephemeral mode), launched without importing Prefect's server
    package into this process: 3.4 s of imports that would compete with the run's own start.

    On Linux the server is asked to end with this process, even on SIGKILL: no orphan server.

    Its output goes to a log file, not to the run's terminal: stopping it mid-query cancels its
    background services and their database sessions, which SQLAlchemy logs as an ERROR with a
    traceback ("Exception during reset or similar ... CancelledError", CI 2026-12-06) on a search
    that succeeded. The file is removed when the server stops; a server that fails to start
    keeps it, and the error names it with its last line.
    """

    def __init__(self, port: int | None = None):
        self.port = port or _free_port()
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self.failed = False  # then its log stays, for the error that names it
        self.inherit_settings = True

    @property
    def api_url(self) -> str:
        """The API's URL, known before the server is up (its port is chosen first)."""
        return f"http://127.0.0.1:{self.port}/api"

    def launch(self, inherit_settings: bool = True) -> TemporaryServer:
        """Start the server's process (it answers seconds later: :meth:`wait_ready`).

        ``inherit_settings``: hand it this process's Prefect settings (those set in code too, as
        tests do) and its database's migration lock; False: import nothing of Prefect here, and
        let the server read its settings from the same environment, profile and folder itself
        (how ``taxi-hpo run`` launches it before its own imports).
        """
        # The server also ends when the *thread* that launched it does (Linux's parent-death
        # signal): launch from the thread that holds ``prefect_api()``, normally the main one.
        settings, lock = {}, "-"
        self.inherit_settings = inherit_settings  # how a relaunch on another port goes too
        if inherit_settings:
            import prefect.settings

            settings = prefect.settings.get_current_settings().to_environment_variables(exclude_unset=True)
            lock = migration_lock()
        # No telemetry by default: the server would log an error per attempt without internet.
        env = {
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            **os.environ,
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
            **settings,
        }
        env.pop("PREFECT_API_URL", None)
        uvicorn_args = [
            "--app-dir",
            str(Path(importlib.util.find_spec("prefect").origin).parent.parent),
            "--factory",
            "prefect.server.api.server:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "error",
            "--lifespan",
            "on",
        ]
        self._remove_log()
        fd, log_path = tempfile.mkstemp(prefix=f"taxi-hpo-prefect-server-{os.getpid()}-", suffix=".log")
        self.log_path = Path(log_path)
        with os.fdopen(fd, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _BOOT, str(os.getpid()), lock, *uvicorn_args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        atexit.register(self.stop)  # a run that fails before prefect_api() takes it over
        timeline.mark("prefect_api_launched")
        return self

    def wait_ready(self, timeout_s: float) -> str:
        """Wait until the server answers; its API URL. A port taken meanwhile: launched again on
        another, as it was launched."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code == 3 and self._port_was_taken():  # between choosing and binding it: another
                self.port = _free_port()
                self.launch(self.inherit_settings)
                continue
            if code is not None:
                self.failed = True
                raise PrefectApiError(self._failure(f"exited with code {code}"))
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self.api_url
            except OSError:
                pass
            time.sleep(0.1)
        self.failed = True
        self.stop()
        raise PrefectApiError(self._failure(f"did not answer within {timeout_s:.0f} s"))

    def _log_lines(self) -> list[str]:
        if self.log_path is None or not self.log_path.exists():
            return []
        return [
            line.strip() for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()
        ]

    def _port_was_taken(self) -> bool:
        # uvicorn exits 3 both when it cannot bind and when the app's start-up fails (a database
        # it cannot reach): only the first is cured by another port
        return any("address already in use" in line.lower() for line in self._log_lines())

    def _failure(self, what: str) -> str:
        lines = self._log_lines()
        # the exception's own line says why; uvicorn's "Application startup failed" does not
        last = next(
            (line for line in reversed(lines) if _EXCEPTION_LINE.match(line)), lines[-1] if lines else ""
        )
        said = f" ({last[:300]})" if last else ""
        return (
            f"the temporary Prefect API server {what}{said}; its log is {self.log_path}. Set "
            f"PREFECT_API_URL to a running server (`prefect server start`) to use that one instead"
        )

    def _remove_log(self) -> None:
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None

    def stop(self) -> None:
        """End the server (SIGTERM, then SIGKILL after 5 s); its log goes unless it failed."""
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        if not self.failed:
            self._remove_log()


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")


def migration_lock() -> str:
    """The lock file a temporary server holds while it starts on its database.

    Prefect's server migrates its database and registers its block types as it starts; servers
    starting at once on one new (or older) database do both at once, and the losers die (seen
    with 4 searches at once on a fresh ``PREFECT_HOME``: alembic's "Online migration expected to
    match one row", a UNIQUE constraint failed on ``block_schema``). A sqlite database's lock sits
    beside its file (every home that shares it shares the lock); any other database's in
    ``PREFECT_HOME``.
    """
    import prefect.settings

    settings = prefect.settings.get_current_settings()
    url = settings.server.database.connection_url
    url = url.get_secret_value() if url is not None else ""
    if url.startswith("sqlite") and ":///" in url and ":memory:" not in url:
        return url.split(":///", 1)[1].split("?", 1)[0] + ".migrate.lock"
    return str(Path(settings.home).expanduser() / "server-migrate.lock")


# ``python -m uvicorn ARGS`` that first asks Linux to SIGTERM it when this process dies (set in
# the child itself: no preexec_fn, which is unsafe in a threaded parent), and starts under
# ``migration_lock()``: held until the server answers, so servers starting at once on one
# database migrate it and register Prefect's block types one at a time (both race otherwise: an
# alembic "Online migration expected to match one row", a UNIQUE constraint on block_schema).
# A server that dies releases it with its process.
_BOOT = """
import os, runpy, signal, sys, threading, time, urllib.request
parent = int(sys.argv[1])
if sys.platform == "linux":
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        sys.exit(0)
import prefect.server.api.server  # the app's imports (seconds) before the lock, not under it
from filelock import FileLock
if sys.argv[2] == "-":  # launched before the run imported Prefect: its settings are ours too
    from taxi_hpo.prefect_server import migration_lock
    sys.argv[2] = migration_lock()
os.makedirs(os.path.dirname(os.path.abspath(sys.argv[2])), exist_ok=True)
lock = FileLock(sys.argv[2], thread_local=False)
lock.acquire()
health = "http://127.0.0.1:%s/api/health" % sys.argv[sys.argv.index("--port") + 1]
def release_when_serving():
    while True:
        try:
            with urllib.request.urlopen(health, timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        time.sleep(0.05)
    lock.release()
threading.Thread(target=release_when_serving, daemon=True).start()
sys.argv = ["uvicorn", *sys.argv[3:]]
runpy.run_module("uvicorn", run_name="__main__", alter_sys=True)
"""


def _free_port() -> int:
    # An OS-assigned port: Prefect's own choice (random in 8000-8999) holds Dask's dashboard
    # port 8787, and the cluster starts at the same time (measured: a uvicorn "address already
    # in use" traceback on the terminal).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def surely_unconfigured(cwd: Path | None = None) -> bool:
    """Whether no Prefect API URL can be configured here, judged without importing Prefect: none
    in the environment, no ``.env``, ``prefect.toml`` or ``[tool.prefect]`` in the folder, none in
    the active profile of Prefect's profiles file. Only a sure "none" is True; anything unclear
    (a file it cannot read) is False, and Prefect's own settings decide later."""
    if "PREFECT_API_URL" in os.environ:
        return False
    folder = Path(cwd or os.getcwd())
    try:
        if (folder / ".env").exists() or (folder / "prefect.toml").exists():
            return False
        pyproject = folder / "pyproject.toml"
        if pyproject.exists() and "tool.prefect" in pyproject.read_text(errors="replace"):
            return False
        home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
        profiles_path = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
        if not profiles_path.exists():
            return True
        profiles = tomllib.loads(profiles_path.read_text())
    except (OSError, ValueError):
        return False
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active") or "ephemeral"
    return "PREFECT_API_URL" not in profiles.get("profiles", {}).get(active, {})


#: ``"server"``: the run's temporary server once launched, which ``prefect_api`` takes over.
EARLY: dict = {}


def launch_unless_configured() -> None:
    """Launch the run's temporary server now, before this process imports Prefect (~1 s), where
    no API URL can be configured (:func:`surely_unconfigured`). ``prefect_api.start_early``
    takes it over, or stops it if Prefect's settings name a URL after all."""
    if "server" not in EARLY and surely_unconfigured():
        EARLY["server"] = TemporaryServer().launch(inherit_settings=False)
