"""cluster/compose/ for real: the image built, the stack up in containers, a search on it.

The base image comes from Debian's packages (debootstrap, then ``podman import``: no image
registry is reachable here), the taxi-hpo image from ``cluster/compose/Dockerfile`` pinned to this
venv's releases, PostgreSQL from a stand-in of Docker Hub's image (``tests/containers/postgres``),
and ``podman-compose`` runs ``cluster/compose/docker-compose.yml`` as a user would, with only the
host ports and the PostgreSQL image changed. Then a search from the compose ``client`` service
over ``tls://``, and from this host: MLflow and Prefect refuse requests without the stack's
credentials, the scheduler refuses plain TCP, the runs, the registered model and the flow run
are there with them, the CA's key is not kept.

Needs root, ``podman``, ``podman-compose``, ``runc`` and ``debootstrap`` (Debian's packages; .ci/run
installs them); skipped without them, unless ``TAXI_HPO_REQUIRE_CONTAINERS=1`` (CI), which makes
their absence a failure. The podman settings below are the ones this kind of machine needs
(``runc``: ``crun`` refuses its hybrid cgroups; the ulimits: setrlimit is refused beyond them).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers import free_port, server_credentials
from taxi_hpo.tracking.names import MODEL_NAME, TRIAL_TAG

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "cluster" / "compose" / "docker-compose.yml"
BASE = "localhost/taxi-hpo-base:bookworm"
POSTGRES = "localhost/taxi-hpo-test-postgres:latest"
IMAGE = "taxi-hpo:0.1.0"
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
"""
TOOLS = ("podman", "podman-compose", "runc", "debootstrap")

pytestmark = pytest.mark.integration


def _missing() -> str | None:
    absent = [tool for tool in TOOLS if shutil.which(tool) is None]
    if absent:
        return f"{', '.join(absent)} not on PATH (apt-get install {' '.join(absent)})"
    if os.geteuid() != 0:
        return "not root (debootstrap and podman's root storage)"
    return None


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> dict:
    """The environment every podman command of this module runs in."""
    why = _missing()
    if why:
        if os.environ.get("TAXI_HPO_REQUIRE_CONTAINERS"):
            pytest.fail(f"containers required (TAXI_HPO_REQUIRE_CONTAINERS=1): {why}")
        pytest.skip(why)
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def sh(argv: list[str], env: dict, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert proc.returncode == 0, f"{' '.join(argv[:4])}...: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    return proc


def exists(image: str, env: dict) -> bool:
    return subprocess.run(["podman", "image", "exists", image], env=env).returncode == 0


@pytest.fixture(scope="module")
def images(engine, tmp_path_factory) -> None:
    """The base image from Debian's packages, the PostgreSQL stand-in and the taxi-hpo image."""
    if not exists(BASE, engine):  # kept between runs on one machine: ~45 s to make
        root = tmp_path_factory.mktemp("rootfs") / "root"
        packages = "python3,python3-venv,libgomp1,ca-certificates,openssl"
        sh(
            ["debootstrap", "--variant=minbase", f"--include={packages}", "bookworm", str(root),
             "http://deb.debian.org/debian"],
            engine,
        )  # fmt: skip
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        sh(["podman", "import", "-", BASE], engine, stdin=tar.stdout)
        assert tar.wait() == 0
        shutil.rmtree(root.parent, ignore_errors=True)
    sh(["podman", "build", "-q", "--build-arg", f"BASE={BASE}", "-t", POSTGRES,
        str(REPO / "tests" / "containers" / "postgres")], engine)  # fmt: skip
    # The build context: what the Dockerfile copies, and this venv's releases as constraints.
    context = tmp_path_factory.mktemp("context")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, context / name)
    for name in ("src", "cluster"):
        shutil.copytree(REPO / name, context / name, ignore=shutil.ignore_patterns("__pycache__"))
    freeze = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True
    )
    pins = [line for line in freeze.stdout.splitlines() if "==" in line and not line.startswith("taxi-hpo")]
    (context / "constraints.txt").write_text("\n".join(pins) + "\n")
    mounts = ["-v", "/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro"]
    uv_cache = Path.home() / ".cache" / "uv"
    if uv_cache.is_dir():  # this machine's downloads, reused
        mounts += ["-v", f"{uv_cache}:/root/.cache/uv"]
    sh(["podman", "build", "-q", "-f", str(context / "cluster" / "compose" / "Dockerfile"),
        "--build-arg", f"BASE={BASE}", *mounts, "-t", IMAGE, str(context)], engine, timeout=900)  # fmt: skip


def http(url: str, body: dict | None = None, auth: str | None = None, host: str | None = None) -> int:
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode())
    request.add_header("Content-Type", "application/json")
    if auth:
        request.add_header("Authorization", auth)
    if host:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@pytest.fixture(scope="module")
def stack(engine, images, data_dir):
    project = f"thpo{os.getpid()}"
    ports = {
        name: free_port() for name in ("MLFLOW_PORT", "PREFECT_PORT", "SCHEDULER_PORT", "DASHBOARD_PORT")
    }
    env = {**engine, **{k: str(v) for k, v in ports.items()}, "POSTGRES_IMAGE": POSTGRES}
    compose = ["podman-compose", "-p", project, "-f", str(COMPOSE)]

    def volume(name: str) -> Path:
        out = sh(["podman", "volume", "inspect", f"{project}_{name}", "--format", "{{.Mountpoint}}"], env)
        return Path(out.stdout.strip())

    try:
        sh([*compose, "up", "-d"], env, timeout=300)
        mlflow = f"http://127.0.0.1:{ports['MLFLOW_PORT']}"
        prefect = f"http://127.0.0.1:{ports['PREFECT_PORT']}/api"
        deadline = time.monotonic() + 240
        while not (http(f"{mlflow}/health") == 200 and http(f"{prefect}/health") == 200):
            assert time.monotonic() < deadline, sh(["podman", "ps", "-a"], env).stdout
            time.sleep(1)
        months = volume("taxi-data")
        for month in ("2021-01", "2021-02"):
            shutil.copy(data_dir / f"green_tripdata_{month}.parquet", months)
            os.chmod(months / f"green_tripdata_{month}.parquet", 0o644)
        yield {"env": env, "compose": compose, "mlflow": mlflow, "prefect": prefect, "ports": ports,
               "secrets": volume("secrets")}  # fmt: skip
    finally:
        subprocess.run([*compose, "down", "-v"], env=env, capture_output=True, timeout=300)


def test_a_search_on_the_compose_stack_closed_by_default(stack, monkeypatch):
    secrets = stack["secrets"]
    # The secrets service made certificates and credentials and kept no CA key.
    assert (secrets / "tls" / "ca.pem").is_file() and not (secrets / "tls" / "ca-key.pem").exists()
    assert oct((secrets / "tls" / "client-key.pem").stat().st_mode & 0o777) == "0o600"
    creds = server_credentials(secrets)
    assert set(creds) == {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING"}

    # Thresholds wide open: in four busy containers on two cores a trial's inference time can pass
    # the default 20 us a row, and the registered version would then not be the best trial (CI saw it).
    proc = subprocess.run(
        [*stack["compose"], "run", "-T", "--rm", "--no-deps", "client",
         "taxi-hpo", "run", "--address", "tls://scheduler:8786", "--tracking-uri", "http://mlflow:5000",
         "--train", "2021-01", "--valid", "2021-02", "--trials", "3", "--rounds", "3", "--max-depth", "5",
         "--max-rmse", "100", "--max-inference-time", "1", "--no-report", "--json"],
        env=stack["env"], capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert (summary["trials_done"], summary["trials_failed"], summary["preprocessor_artifacts"]) == (3, 0, 1)
    assert summary["registered_version"] == "1" and summary["lr_rmse"] == pytest.approx(7.7587, abs=1e-4)
    workers = {t["worker"].split(":")[0] for t in summary["trials"]}
    assert socket.gethostname() not in workers  # trials ran in the worker containers

    # From this host: nothing without the credentials, everything with them.
    mlflow_host = f"127.0.0.1:{stack['ports']['MLFLOW_PORT']}"
    search = f"{stack['mlflow']}/api/2.0/mlflow/runs/search"
    body = {"experiment_ids": [summary["experiment_id"]], "max_results": 100}
    assert http(search, body, host=mlflow_host) == 401
    basic = (
        "Basic "
        + base64.b64encode(
            f"{creds['MLFLOW_TRACKING_USERNAME']}:{creds['MLFLOW_TRACKING_PASSWORD']}".encode()
        ).decode()
    )
    assert http(search, body, auth=basic, host=mlflow_host) == 200
    flow_runs = f"{stack['prefect']}/flow_runs/filter"
    assert http(flow_runs, {}) == 401
    prefect_auth = "Basic " + base64.b64encode(creds["PREFECT_API_AUTH_STRING"].encode()).decode()
    assert http(flow_runs, {}, auth=prefect_auth) == 200

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", creds["MLFLOW_TRACKING_USERNAME"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", creds["MLFLOW_TRACKING_PASSWORD"])
    from mlflow import MlflowClient

    client = MlflowClient(stack["mlflow"])
    runs = client.search_runs([summary["experiment_id"]], max_results=100)
    assert client.get_run(summary["parent_run_id"]).info.status == "FINISHED"
    children = [
        r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == summary["parent_run_id"] and TRIAL_TAG in r.data.tags
    ]
    assert len(children) == 3 and all(r.info.status == "FINISHED" for r in children)
    assert client.get_model_version(MODEL_NAME, "1").run_id == summary["best_run_id"]


def test_the_scheduler_refuses_plain_tcp(stack):
    from distributed import Client

    with pytest.raises((OSError, TimeoutError)):
        Client(f"tcp://127.0.0.1:{stack['ports']['SCHEDULER_PORT']}", timeout=5)
