"""``--address``: the pre-flight checks, and real searches on hosts made of network namespaces.

The integration tests build three "hosts" on this machine: the root namespace (the client, the
MLflow and Prefect servers) and namespaces for the scheduler and two workers, on one bridge,
each with its own hostname. Every service is started and stopped by the cluster/local scripts,
so they cannot rot. Needs root, ``ip`` (iproute2) and ``unshare`` (util-linux); without them
the tests skip, except on CI (``CI=true``), where they fail.

The servers listen beyond loopback, so they run as the scripts start them by default: MLflow
with basic auth and Prefect with an auth string, both generated into the client host's run
dir, which the client and these tests read. The plain ``tcp://`` cluster is the scripts'
explicit opt-out (``ALLOW_PLAINTEXT=1``); ``tests/test_security.py`` runs the secure default.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import dask.config
import pytest
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

from helpers import free_port, migrated_prefect_home, server_credentials
from taxi_hpo import cli, cluster, tracking
from taxi_hpo.cluster import credentials
from taxi_hpo.config import RunConfig
from taxi_hpo.errors import ClusterError, TrackingError
from taxi_hpo.preflight import remote

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "cluster" / "local"
VENV_BIN = Path(sys.executable).parent
SMALL = ["--rounds", "3", "--max-depth", "5", "--no-register", "--no-report"]
THREADS = "2"  # XGBoost threads per trial: the workers' OMP_NUM_THREADS must follow it


# -- unit: the one-line refusals -------------------------------------------------------------


def one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text and text
    return text


@pytest.fixture
def api_url_unset():
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        yield


@pytest.fixture
def api_url_set():
    with temporary_settings(updates={PREFECT_API_URL: "http://10.213.0.1:4200/api"}):
        yield


def cfg(tmp_path, address="tcp://10.213.0.2:8786", **kw) -> RunConfig:
    return RunConfig(address=address, workdir=str(tmp_path), **kw)


@pytest.mark.parametrize("uri", [None, "file:///tmp/mlruns", "/tmp/mlruns"])
def test_local_tracking_store_refused_for_remote_scheduler(tmp_path, api_url_set, uri):
    with pytest.raises(TrackingError) as exc:
        remote.check(cfg(tmp_path, tracking_uri=uri))  # refused before any connection
    assert "that the scheduler tcp://10.213.0.2:8786 cannot open" in one_line(exc)
    assert "start-mlflow.sh" in str(exc.value)


def test_cli_refuses_sqlite_store_for_remote_scheduler_in_one_line(data_dir, workdir, api_url_set, capsys):
    assert cli.main(["run", "--address", "tcp://10.213.0.2:8786", "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("taxi-hpo: error: --tracking-uri sqlite:///")


def test_database_tracking_uri_refused_for_remote_scheduler(tmp_path, api_url_set):
    with pytest.raises(TrackingError) as exc:
        remote.check(cfg(tmp_path, tracking_uri="postgresql://mlflow@db/mlflow"))
    assert "artifacts-destination" in one_line(exc)


def test_missing_prefect_api_refused(tmp_path, api_url_unset):
    with pytest.raises(ClusterError) as exc:
        remote.check(cfg(tmp_path, tracking_uri="http://10.213.0.1:5000"))
    assert "PREFECT_API_URL is not set" in one_line(exc)


def test_loopback_urls_refused_for_remote_scheduler(tmp_path):
    with (
        temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4200/api"}),
        pytest.raises(ClusterError) as exc,
    ):
        remote.check(cfg(tmp_path, tracking_uri="http://10.213.0.1:5000"))
    assert "PREFECT_API_URL http://127.0.0.1:4200/api is loopback" in one_line(exc)


def test_tls_without_client_certificates_refused(tmp_path, api_url_set):
    no_certificates = {"distributed.comm.tls.ca-file": None, "distributed.comm.tls.client.cert": None}
    with dask.config.set(no_certificates), pytest.raises(ClusterError) as exc:
        remote.check(cfg(tmp_path, address="tls://10.213.0.2:8786", tracking_uri="http://10.213.0.1:5000"))
    assert "DASK_CONFIG" in one_line(exc) and "no CA file" in str(exc.value)


def test_unreachable_loopback_scheduler(tmp_path, api_url_set):
    with pytest.raises(ClusterError) as exc:
        remote.check(cfg(tmp_path, address="tcp://127.0.0.1:9"), timeout_s=2)
    assert "unreachable within 2 s" in one_line(exc)


def probe(**kw) -> dict:
    result = {
        "taxi_hpo": "0.1.0",
        "prefect": "3.9.1",
        "python": "3.11.4",
        "host": "w1",
        "omp_num_threads": "1",
        "unreachable": {},
    }
    return {**result, **kw}


CLIENT = {"taxi_hpo": "0.1.0", "prefect": "3.9.0", "python": "3.11.9"}


@pytest.mark.parametrize(
    "bad, expected",
    [
        ({"taxi_hpo": None}, "taxi_hpo is not importable on 1 of 2 workers (tcp://10.213.0.4:1)"),
        ({"taxi_hpo": "0.0.9"}, "runs taxi_hpo 0.0.9 but this client runs 0.1.0"),
        ({"python": "3.12.1"}, "runs Python 3.12.1 but this client runs 3.11.9"),
        (
            {"unreachable": {"Prefect API": "URLError: refused"}},
            "cannot reach the Prefect API http://h:4200/api",
        ),
    ],
)
def test_worker_probe_failures(bad, expected):
    probes = {"tcp://10.213.0.3:1": probe(), "tcp://10.213.0.4:1": probe(**bad)}
    with pytest.raises(ClusterError) as exc:
        remote.check_workers(probes, "http://h:5000", "http://h:4200/api", CLIENT)
    assert expected in one_line(exc)


def test_unreachable_tracking_server_is_a_tracking_error():
    probes = {"tcp://10.213.0.3:1": probe(unreachable={"MLflow tracking server": "URLError: refused"})}
    with pytest.raises(TrackingError) as exc:
        remote.check_workers(probes, "http://h:5000", "http://h:4200/api", CLIENT)
    assert (
        "worker tcp://10.213.0.3:1 (host w1) cannot reach the MLflow tracking server http://h:5000"
        in one_line(exc)
    )


def test_sqlite_store_allowed_when_every_worker_is_local():
    remote.check_placement("sqlite:////tmp/mlflow.db", "http://127.0.0.1:4200/api", None)
    with pytest.raises(TrackingError):
        remote.check_placement(
            "sqlite:////tmp/mlflow.db", "http://127.0.0.1:4200/api", "worker tcp://10.0.0.7:1"
        )


# -- the hosts: network namespaces on one bridge ---------------------------------------------


def _namespaces_unavailable() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool, package in (
        ("ip", "iproute2"),
        ("unshare", "util-linux"),
        ("setsid", "util-linux"),
        ("hostname", "hostname"),
        ("openssl", "openssl"),
    ):
        if shutil.which(tool) is None:
            return f"`{tool}` is missing: apt-get install {package}"
    probe_ns = f"thpo-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe_ns], capture_output=True, text=True)
    subprocess.run(["ip", "netns", "del", probe_ns], capture_output=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    return None


def require_namespaces() -> None:
    reason = _namespaces_unavailable()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must run the namespace tests, but {reason}")
    pytest.skip(reason)


@dataclass
class Host:
    name: str
    ip: str
    run_dir: Path
    netns: str | None = None  # None: the root namespace


@dataclass
class Net:
    """A bridge in the root namespace (the client host, ``.1``) and one namespace per host."""

    tag: str
    subnet: str
    root: Path
    hosts: dict[str, Host] = field(default_factory=dict)

    @property
    def bridge(self) -> str:
        return f"thbr{self.tag}"

    def up(self, names: list[str]) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        self.hosts["client"] = Host("client", f"{self.subnet}.1", self.root / "client")
        for i, name in enumerate(names, start=2):
            netns, outer = f"thpo{self.tag}-{name}", f"th{self.tag}v{i}"
            _ip("netns", "add", netns)
            self.hosts[name] = Host(name, f"{self.subnet}.{i}", self.root / name, netns)
            _ip("link", "add", outer, "type", "veth", "peer", "name", f"th{self.tag}p{i}")
            _ip("link", "set", outer, "master", self.bridge, "up")
            _ip("link", "set", f"th{self.tag}p{i}", "netns", netns)
            _ip("-n", netns, "link", "set", f"th{self.tag}p{i}", "name", "eth0")
            _ip("-n", netns, "addr", "add", f"{self.subnet}.{i}/24", "dev", "eth0")
            _ip("-n", netns, "link", "set", "eth0", "up")
            _ip("-n", netns, "link", "set", "lo", "up")

    def script(self, host: str, script: str, *args: str, env: dict | None = None) -> subprocess.Popen:
        """Start a cluster/local script on ``host``: in its namespace, under its own hostname."""
        h = self.hosts[host]
        argv = [str(LOCAL / script), *args]
        if h.netns:
            argv = [
                "ip",
                "netns",
                "exec",
                h.netns,
                "unshare",
                "--uts",
                "sh",
                "-c",
                'hostname "$0" && exec "$@"',
                f"thpo-{host}",
                *argv,
            ]
        # A host starts with none of this process's credentials: workers get them from the flow.
        inherited = {
            k: v for k, v in os.environ.items() if k != "PREFECT_API_URL" and k not in credentials.ENV_NAMES
        }
        full_env = {
            **inherited,
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
            "TAXI_HPO_RUN_DIR": str(h.run_dir),
            "PREFECT_HOME": str(h.run_dir / "prefect"),
            "BIND_HOST": h.ip,
            "THREADS_PER_TRIAL": THREADS,
            **(env or {}),
        }
        return subprocess.Popen(
            argv, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def down(self) -> None:
        """Stop every service by its pid file, then anything left in the namespaces; delete them."""
        stop_all([h.run_dir for h in self.hosts.values()])
        for h in self.hosts.values():
            if h.netns:
                pids = subprocess.run(
                    ["ip", "netns", "pids", h.netns], capture_output=True, text=True
                ).stdout.split()
                for pid in pids:  # only processes we started live in our namespaces
                    try:
                        os.kill(int(pid), 9)
                    except (ProcessLookupError, ValueError):
                        pass
                subprocess.run(["ip", "netns", "del", h.netns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


def stop_all(run_dirs: list[Path]) -> None:
    """``stop.sh`` on every host whose run folder is in ``run_dirs``, all at once (a host's
    services stop one after the other, each given up to 5 s)."""
    procs = [
        subprocess.Popen(
            [str(LOCAL / "stop.sh")],
            env={**os.environ, "TAXI_HPO_RUN_DIR": str(run_dir), "STOP_WAIT_S": "5"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for run_dir in run_dirs
        if run_dir.is_dir()
    ]
    for proc in procs:
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


def wait_all(procs: dict[str, subprocess.Popen], timeout: float = 150) -> None:
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, f"{name} did not start:\n{out}"


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    require_namespaces()
    tag = f"{os.getpid() % 1000:03d}"
    subnet = f"10.213.{100 + os.getpid() % 150}"
    n = Net(tag, subnet, tmp_path_factory.mktemp("hosts"))
    try:
        n.up(["sched", "w1", "w2"])
        yield n
    finally:
        n.down()


@dataclass
class Stack:
    tracking_uri: str
    api_url: str
    address: str
    client_home: Path
    credentials: dict = field(default_factory=dict)  # what start-mlflow.sh and start-prefect.sh made

    def prefect_settings(self) -> dict:
        """``temporary_settings`` updates for this process's Prefect client."""
        auth = self.credentials.get("PREFECT_API_AUTH_STRING")
        return {PREFECT_API_URL: self.api_url, **({PREFECT_API_AUTH_STRING: auth} if auth else {})}


def start_cluster(
    net: Net, tls_dir: Path | None = None, port: int = 8786, run_subdir: str | None = None
) -> dict[str, subprocess.Popen]:
    """The scheduler and one worker process on each worker host, all at once; without
    ``tls_dir``, plain TCP through the scripts' explicit opt-out. ``port`` and ``run_subdir``
    (the services' run folder under each host's): a second cluster beside the first."""
    env = {"TLS_DIR": str(tls_dir)} if tls_dir else {"ALLOW_PLAINTEXT": "1"}
    if port != 8786:
        env.update(SCHEDULER_PORT=str(port), DASHBOARD_PORT=str(port + 1))
    scheme = "tls" if tls_dir else "tcp"
    address = f"{scheme}://{net.hosts['sched'].ip}:{port}"

    def host_env(host: str) -> dict:
        if run_subdir is None:
            return env
        return {**env, "TAXI_HPO_RUN_DIR": str(net.hosts[host].run_dir / run_subdir)}

    return {
        "scheduler": net.script("sched", "start-scheduler.sh", env=host_env("sched")),
        **{
            f"workers on {w}": net.script(w, "start-workers.sh", address, "1", env=host_env(w))
            for w in ("w1", "w2")
        },
    }


def stop_cluster(net: Net, run_subdir: str) -> None:
    """Stop what :func:`start_cluster` started under ``run_subdir``, by its pid files."""
    stop_all([net.hosts[host].run_dir / run_subdir for host in ("w1", "w2", "sched")])


def seed_client_stores(net) -> None:
    """The client host's MLflow and Prefect databases start migrated, as a user's are after the
    first start (~10 CPU-s of migrations, which other tests make)."""
    from taxi_hpo.tracking.store import seed_sqlite_store

    run_dir = net.hosts["client"].run_dir
    migrated_prefect_home(run_dir / "prefect")
    seed_sqlite_store(f"sqlite:///{run_dir / 'mlflow.db'}")


@pytest.fixture(scope="module")
def stack(net, tmp_path_factory) -> Stack:
    """MLflow and Prefect on the client host (with the credentials their scripts made), a
    tcp:// scheduler and two worker hosts. MLflow's credentials are in this process's
    environment while the module runs (MlflowClient reads them there)."""
    client = net.hosts["client"]
    mlflow_port, prefect_port = free_port(client.ip), free_port(client.ip)
    seed_client_stores(net)
    wait_all(
        {
            "mlflow": net.script(
                "client", "start-mlflow.sh", env={"MLFLOW_PORT": str(mlflow_port), "MLFLOW_WORKERS": "1"}
            ),
            "prefect": net.script("client", "start-prefect.sh", env={"PREFECT_PORT": str(prefect_port)}),
            **start_cluster(net),
        }
    )
    creds = server_credentials(client.run_dir)
    with pytest.MonkeyPatch.context() as mp:
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            mp.setenv(name, creds[name])
        yield Stack(
            f"http://{client.ip}:{mlflow_port}",
            f"http://{client.ip}:{prefect_port}/api",
            f"tcp://{net.hosts['sched'].ip}:8786",
            tmp_path_factory.mktemp("client-home"),
            creds,
        )


def search_command(
    stack: Stack, address: str, data_dir: Path, *args: str, env: dict | None = None, creds: dict | None = None
) -> tuple[list[str], dict]:
    """``taxi-hpo run`` on the stack: argv and environment, with the stack's credentials
    (``creds``: others) and no TLS settings unless given."""
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith("DASK_") and k not in credentials.ENV_NAMES
    }
    full_env = {
        **clean,
        "PREFECT_API_URL": stack.api_url,
        "PREFECT_HOME": str(stack.client_home),
        **(stack.credentials if creds is None else creds),
        **(env or {}),
    }
    return (
        [
            str(VENV_BIN / "taxi-hpo"),
            "run",
            "--address",
            address,
            "--tracking-uri",
            stack.tracking_uri,
            "--data-dir",
            str(data_dir),
            "--threads-per-worker",
            THREADS,
            *SMALL,
            "--json",
            *args,
        ],
        full_env,
    )


def run_search(
    stack: Stack,
    address: str,
    data_dir: Path,
    cwd: Path,
    *args: str,
    env: dict | None = None,
    creds: dict | None = None,
) -> subprocess.CompletedProcess:
    argv, full_env = search_command(stack, address, data_dir, *args, env=env, creds=creds)
    return subprocess.run(argv, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=240)


def summary_of(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_ran_remotely(s: dict, stack: Stack, trials: int) -> None:
    """Trials on the worker hosts; every run, artifact and the one preprocessor in the server."""
    assert (s["trials_done"], s["trials_failed"]) == (trials, 0)
    hosts = {t["worker"].split(":")[0] for t in s["trials"]}
    assert hosts <= {"thpo-w1", "thpo-w2"} and socket.gethostname() not in hosts
    assert all(int(t["worker"].split(":")[1]) != os.getpid() for t in s["trials"])
    assert s["tracking_uri"] == stack.tracking_uri and s["preprocessor_artifacts"] == 1
    client = MlflowClient(stack.tracking_uri)
    children = tracking.child_runs(stack.tracking_uri, s["parent_run_id"])
    trial_runs = [r for r in children if tracking.TRIAL_TAG in r.data.tags]
    assert len(trial_runs) == trials and all(r.info.status == "FINISHED" for r in children)
    for run in trial_runs:
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # served through the server
        assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/booster.ubj"]


# -- integration: tcp:// ---------------------------------------------------------------------


@pytest.mark.integration
def test_preflight_probes_the_workers(stack, tmp_path):
    with temporary_settings(updates=stack.prefect_settings()):
        info = remote.check(
            cfg(
                tmp_path,
                address=stack.address,
                tracking_uri=stack.tracking_uri,
                threads_per_worker=int(THREADS),
            )
        )
        assert info["workers"] == 2 and set(info["versions"].values()) == {
            remote.client_environment()["taxi_hpo"]
        }
        assert {p["host"] for p in info["probes"].values()} == {"thpo-w1", "thpo-w2"}
        assert {p["omp_num_threads"] for p in info["probes"].values()} == {THREADS}
        unused = stack.tracking_uri.rsplit(":", 1)[0] + ":9"
        with pytest.raises(TrackingError) as exc:
            remote.check(cfg(tmp_path, address=stack.address, tracking_uri=unused))
        assert f"cannot reach the MLflow tracking server {unused}" in one_line(exc)


@pytest.fixture(scope="module")
def remote_search(stack, data_dir, tmp_path_factory) -> dict:
    """A 3-trial search on the worker hosts: what test_search_on_remote_workers checks, and the
    search the warm start of the pruning test starts from."""
    return summary_of(
        run_search(stack, stack.address, data_dir, tmp_path_factory.mktemp("remote-search"), "--trials", "3")
    )


@pytest.mark.integration
def test_search_on_remote_workers(stack, remote_search):
    s = remote_search
    assert s["slots"] == 2
    assert_ran_remotely(s, stack, 3)
    # The trials are task runs of the search's flow run in the shared Prefect API (the UI's view).
    flow_run_id = MlflowClient(stack.tracking_uri).get_run(s["parent_run_id"]).data.tags["flow_run_id"]
    with temporary_settings(updates=stack.prefect_settings()), get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
        )
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))
    # Each trial's log line was shipped to the API from the remote worker that ran it.
    shipped = [
        log.message for log in logs if log.message.startswith("trial ") and "rmse_valid" in log.message
    ]
    assert len(shipped) == 3 and all(" on thpo-w" in m for m in shipped), shipped
    trials = sorted(t.name for t in task_runs if t.name.startswith("trial-"))
    assert flow_run.state.is_completed() and trials == ["trial-0", "trial-1", "trial-2"]
    assert all(t.state.is_completed() for t in task_runs if t.name.startswith("trial-"))


@pytest.mark.integration
def test_pruning_and_a_warm_start_on_remote_workers(stack, remote_search, data_dir, tmp_path):
    first = remote_search
    s = summary_of(
        run_search(
            stack,
            stack.address,
            data_dir,
            tmp_path,
            "--trials",
            "8",
            "--mode",
            "batch",
            "--batch-size",
            "2",
            "--prune",
            "asha",
            "--warm-start",
            first["parent_run_id"],
            "--warm-start-trials",
            "2",
            "--timeout",
            "10m",
        )
    )
    assert_ran_remotely(s, stack, 8)
    # a budget that does not run out changes nothing
    assert s["prune"] == "asha" and not s["ended_on_timeout"] and s["trials_not_started"] == 0
    # 3 rounds: one checkpoint (round 2), so pruning is possible from the second batch on; batch
    # mode is reproducible, and these 8 trials prune some
    pruned = [t for t in s["trials"] if t["pruned_at"] is not None]
    assert pruned and all(t["pruned_at"] == 2 and t["trial_id"] >= 2 for t in pruned)
    assert s["trials_pruned"] == len(pruned)
    assert s["warm_start"] == [
        f"{first['parent_run_id']}:{t['trial_id']}"
        for t in sorted(first["trials"], key=lambda t: t["loss"])[:2]
    ]


@pytest.mark.integration
def test_a_killing_budget_stops_trials_on_remote_workers(stack, data_dir, tmp_path):
    """The budget's stop reaches trials running on other hosts: they end KILLED between two
    rounds, and the trial after them never starts."""
    s = summary_of(
        run_search(
            stack,
            stack.address,
            data_dir,
            tmp_path,
            "--trials",
            "3",
            "--rounds",
            "400",
            "--max-depth",
            "40",
            "--seed",
            "7",
            "--timeout",
            "1s",
            "--timeout-kill",
        )
    )
    cancelled = [t for t in s["trials"] if t["error"] and "time budget" in t["error"]]
    assert s["ended_on_timeout"] and s["trials_cancelled"] == len(cancelled) >= 1
    assert {t["worker"].split(":")[0] for t in cancelled} <= {"thpo-w1", "thpo-w2"}
    client = MlflowClient(stack.tracking_uri)
    assert {client.get_run(t["run_id"]).info.status for t in cancelled} == {"KILLED"}
    for t in cancelled:
        stopped_after = int(re.search(r"stopped after round (\d+)", t["error"]).group(1))
        assert 1 <= stopped_after < 400, t["error"]


# -- integration: tls:// ---------------------------------------------------------------------

TLS_PORT = 8796  # beside the module's tcp:// scheduler on 8786 (same hosts, its own run folders)


@pytest.fixture
def tls_cluster(net, tmp_path):
    """A tls:// scheduler and workers on the same hosts as the module's tcp:// cluster, which
    keeps running (no test depends on the order they run in); stopped at the end."""
    certs, stranger = tmp_path / "certs", tmp_path / "other-ca"
    for out in (certs, stranger):
        subprocess.run(
            [str(REPO / "cluster" / "tls" / "make-certs.sh"), str(out), net.hosts["sched"].ip],
            check=True,
            capture_output=True,
        )
    try:
        wait_all(start_cluster(net, tls_dir=certs, port=TLS_PORT, run_subdir="tls"))
        yield f"tls://{net.hosts['sched'].ip}:{TLS_PORT}", certs, stranger
    finally:
        stop_cluster(net, "tls")


@pytest.mark.integration
def test_search_over_tls(stack, tls_cluster, data_dir, tmp_path):
    address, certs, stranger = tls_cluster

    # Refused: no certificates at all, and certificates of another CA.
    proc = run_search(stack, address, data_dir, tmp_path, "--trials", "2")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "DASK_CONFIG" in proc.stderr, proc.stderr
    with (
        dask.config.set(
            {
                "distributed.comm.tls.ca-file": str(stranger / "ca.pem"),
                "distributed.comm.tls.client.cert": str(stranger / "client.pem"),
                "distributed.comm.tls.client.key": str(stranger / "client-key.pem"),
            }
        ),
        pytest.raises(ClusterError, match="unreachable"),
    ):
        cluster.probe_scheduler(address, timeout_s=3)
    with pytest.raises(ClusterError):
        cluster.probe_scheduler(address.replace("tls://", "tcp://"), timeout_s=3)

    s = summary_of(
        run_search(
            stack,
            address,
            data_dir,
            tmp_path,
            "--trials",
            "2",
            env={"DASK_CONFIG": str(certs / "client.yaml")},
        )
    )
    assert_ran_remotely(s, stack, 2)
