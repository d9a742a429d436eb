"""cluster/: the scripts parse, and compose and Kubernetes say what cluster/local does.

The local scripts are the reference (the namespace tests run them): each start script's
program, flags and ports must reappear in docker-compose.yml and the Kubernetes manifests.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import dask.config
import distributed
import pytest
import yaml

from taxi_hpo import cluster

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
LOCAL = CLUSTER / "local"
# Flags that only make sense on a bare host (where to bind, which certificates, names).
HOST_ONLY = {"--host", "--protocol", "--name", "--allowed-hosts", "--tls-ca-file", "--tls-cert", "--tls-key"}


def defaults() -> dict[str, str]:
    text = (LOCAL / "common.sh").read_text()
    return dict(re.findall(r': "\$\{(\w+):=([^}]*)\}"', text))


def thread_environ_keys() -> set[str]:
    lines = (LOCAL / "common.sh").read_text().splitlines()
    line = next(text for text in lines if text.startswith("THREAD_ENVIRON="))
    return set(re.findall(r"'(\w+)':", line))


def script_command(script: str) -> tuple[str, set[str]]:
    """The program (e.g. ``dask worker``) and flags of a start script's ``start_daemon`` line."""
    text = (LOCAL / script).read_text().replace("\\\n", " ")
    line = next(row for row in text.splitlines() if row.lstrip().startswith("start_daemon "))
    words = line.split()[2:]
    program = " ".join(w for w in words[:3] if not w.startswith(("-", '"', "$")))
    return program, set(re.findall(r"(?<![\w-])--[a-z][\w-]*", line))


SERVICES = {  # local script -> compose service / Kubernetes workload
    "start-scheduler.sh": ("scheduler", "scheduler"),
    "start-workers.sh": ("worker", "worker"),
    "start-mlflow.sh": ("mlflow", "mlflow"),
    "start-prefect.sh": ("prefect", "prefect"),
}
PORT_OF = {
    "start-scheduler.sh": "SCHEDULER_PORT",
    "start-mlflow.sh": "MLFLOW_PORT",
    "start-prefect.sh": "PREFECT_PORT",
}


def test_scripts_parse():
    for script in sorted(LOCAL.glob("*.sh")) + [
        CLUSTER / "tls" / "make-certs.sh",
        CLUSTER / "compose" / "entrypoint.sh",
    ]:
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{script.name}: {proc.stderr}"
    for script in LOCAL.glob("*.sh"):
        if script.name != "common.sh":
            assert script.stat().st_mode & 0o111, f"{script.name} is not executable"


def test_thread_variables_match_the_local_cluster():
    assert thread_environ_keys() == set(cluster.THREAD_ENV)


def test_remote_workers_get_the_quiet_dask_settings_of_the_local_cluster():
    import dask

    exported = dict(
        re.findall(r'^export (DASK_\w+)="\$\{\1:-([^}]*)\}"', (LOCAL / "common.sh").read_text(), re.M)
    )
    expected = {
        "DASK_" + key.upper().replace(".", "__").replace("-", "_"): str(value)
        for key, value in cluster.QUIET_DASK.items()
    }
    assert exported == expected
    # dask reads each variable back as the setting it stands for
    for name, value in exported.items():
        assert dask.config.collect_env({name: value}) != {}


# -- docker compose ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((CLUSTER / "compose" / "docker-compose.yml").read_text())


def entrypoint_roles() -> dict[str, str]:
    """Role -> the cluster/local script the image's entrypoint runs for it."""
    text = (CLUSTER / "compose" / "entrypoint.sh").read_text()
    return dict(re.findall(r'^\s+(\w+)\) exec "\$cluster/local/(start-[\w-]+\.sh)"', text, re.M))


@pytest.mark.parametrize("script", list(SERVICES))
def test_compose_runs_the_local_scripts(compose, script):
    """Each service is its role of the image's entrypoint, which runs the local script itself
    (FOREGROUND=1), so the containers get its flags, checks and opt-outs."""
    service = compose["services"][SERVICES[script][0]]
    assert service["command"] == [SERVICES[script][0]]
    assert entrypoint_roles()[SERVICES[script][0]] == script
    if script in PORT_OF:
        port = defaults()[PORT_OF[script]]
        assert f"${{{PORT_OF[script]}:-{port}}}:{port}" in service["ports"]


def test_compose_wiring(compose):
    d, services = defaults(), compose["services"]
    assert (
        services["scheduler"]["ports"][1]
        == f"${{DASHBOARD_PORT:-{d['DASHBOARD_PORT']}}}:{d['DASHBOARD_PORT']}"
    )
    assert services["worker"]["environment"]["SCHEDULER_HOST"] == "scheduler"
    assert services["mlflow"]["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert services["client"]["environment"]["PREFECT_API_URL"] == f"http://prefect:{d['PREFECT_PORT']}/api"
    assert all(s.get("image") == "taxi-hpo:0.1.0" for n, s in services.items() if n != "postgres")
    dockerfile = CLUSTER / "compose" / services["mlflow"]["build"]["dockerfile"].split("/")[-1]
    assert 'ENTRYPOINT ["/opt/taxi-hpo/cluster/compose/entrypoint.sh"]' in dockerfile.read_text()
    # Closed by default: every service of the image reads the same opt-outs (off unless set) and
    # the secrets, which only the secrets service may write.
    for name, service in services.items():
        if name == "postgres":
            continue
        env = service["environment"]
        assert (
            env["ALLOW_PLAINTEXT"] == "${ALLOW_PLAINTEXT:-0}"
            and env["ALLOW_NO_AUTH"] == "${ALLOW_NO_AUTH:-0}"
        )
        mode = "" if name == "secrets" else ":ro"
        assert f"secrets:/secrets{mode}" in service["volumes"], name
    assert services["secrets"]["command"] == ["secrets"] and services["secrets"]["restart"] == "no"


# -- Kubernetes --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict]:
    """Every container of the manifests by name, with its kind."""
    containers = {}
    for path in sorted((CLUSTER / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            for spec in _pod_specs(doc):
                for c in spec["containers"]:
                    containers[c["name"]] = c
    return containers


def _pod_specs(doc: dict):
    if doc["kind"] == "DaskCluster":
        yield doc["spec"]["worker"]["spec"]
        yield doc["spec"]["scheduler"]["spec"]
    elif doc["kind"] in ("Deployment", "StatefulSet", "Job"):
        yield doc["spec"]["template"]["spec"]


def _argv(container: dict) -> list[str]:
    words = container.get("command", []) + container.get("args", [])
    if words[:2] == ["sh", "-c"]:
        return shlex.split(" ".join(words[2:]))
    return words


@pytest.mark.parametrize("script", list(SERVICES))
def test_kubernetes_runs_the_local_scripts(k8s, script):
    """Each workload is its role of the image's entrypoint (the local script), on its port."""
    container = k8s[SERVICES[script][1]]
    assert "command" not in container and container["args"] == [SERVICES[script][1]]
    assert entrypoint_roles()[SERVICES[script][1]] == script
    if script in PORT_OF:
        port = defaults()[PORT_OF[script]]
        assert int(port) in {p["containerPort"] for p in container["ports"]}


def test_kubernetes_wiring_closed_by_default(k8s):
    d = defaults()
    env = {e["name"]: e.get("value") for e in k8s["worker"]["env"]}
    assert env["SCHEDULER_HOST"] == "taxi-hpo-scheduler" and env["THREADS_PER_TRIAL"] == "1"
    client = k8s["client"]
    argv = _argv(client)
    assert argv[argv.index("--address") + 1] == f"tls://taxi-hpo-scheduler:{d['SCHEDULER_PORT']}"
    assert argv[argv.index("--tracking-uri") + 1] == f"http://mlflow:{d['MLFLOW_PORT']}"
    assert {e["name"]: e.get("value") for e in client["env"]}[
        "PREFECT_API_URL"
    ] == f"http://prefect:{d['PREFECT_PORT']}/api"
    # Every pod mounts the auth Secret at /secrets and, where Dask runs, the TLS one where
    # SECRETS_TLS_DIR says; no pod opts out of either.
    for name, container in k8s.items():
        if name == "postgres":
            continue
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts.get("/secrets") == "auth", name
        values = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert not {"ALLOW_PLAINTEXT", "ALLOW_NO_AUTH"} & set(values), name
        if name in ("scheduler", "worker", "client"):
            assert mounts.get(values["SECRETS_TLS_DIR"]) == "tls", name
    services = {
        doc["metadata"]["name"]: doc
        for path in (CLUSTER / "kubernetes").glob("*.yaml")
        for doc in yaml.safe_load_all(path.read_text())
        if doc["kind"] == "Service"
    }
    assert services["mlflow"]["spec"]["ports"][0]["port"] == int(d["MLFLOW_PORT"])
    assert services["prefect"]["spec"]["ports"][0]["port"] == int(d["PREFECT_PORT"])


def test_kubernetes_secrets_are_made_by_the_images_own_role(tmp_path):
    """make-secrets.sh hands kubectl (a stand-in here: no cluster) two folders: certificates whose
    client config names the pods' paths, no CA key; the credentials and the ready mark."""
    bin_dir, got = tmp_path / "bin", tmp_path / "got"
    bin_dir.mkdir()
    (bin_dir / "kubectl").write_text(
        "#!/usr/bin/env bash\n"
        'name=$4; for a in "$@"; do case $a in\n'
        '  --from-file=*) cp -r "${a#--from-file=}" "$GOT/$name";; esac; done\n'
    )
    (bin_dir / "kubectl").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "GOT": str(got)}
    got.mkdir()
    proc = subprocess.run(
        [str(CLUSTER / "kubernetes" / "make-secrets.sh"), "ns1"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    tls, auth = got / "taxi-hpo-tls", got / "taxi-hpo-auth"
    assert {p.name for p in tls.iterdir()} >= {"ca.pem", "scheduler-key.pem", "worker.pem", "client.yaml"}
    assert not (tls / "ca-key.pem").exists()
    client = yaml.safe_load((tls / "client.yaml").read_text())["distributed"]["comm"]["tls"]
    assert (
        client["ca-file"] == "/secrets-tls/ca.pem"
        and client["client"]["key"] == "/secrets-tls/client-key.pem"
    )
    assert {p.name for p in auth.iterdir()} == {"mlflow-auth.env", "prefect-auth.env", "ready"}
    assert "MLFLOW_TRACKING_PASSWORD=" in (auth / "mlflow-auth.env").read_text()


def _dotted(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: dask.config.set replaces whole nested dicts."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# -- TLS ---------------------------------------------------------------------------------------


def test_tls_configs_are_distributed_configs(tmp_path):
    subprocess.run(
        [str(CLUSTER / "tls" / "make-certs.sh"), str(tmp_path), "10.213.0.2"], check=True, capture_output=True
    )
    for role in ("scheduler", "worker", "client"):
        config = list(dask.config.collect_yaml([str(tmp_path / f"{role}.yaml")]))[0]
        with dask.config.set(_dotted(config)):
            security = distributed.Security()
            assert security.require_encryption
            assert security.tls_ca_file == str(tmp_path / "ca.pem")
            assert getattr(security, f"tls_{role}_cert") == str(tmp_path / f"{role}.pem")
            assert getattr(security, f"tls_{role}_key") == str(tmp_path / f"{role}-key.pem")
            if role == "client":
                assert cluster.tls_client_files()["cert"] == str(tmp_path / "client.pem")
        verify = subprocess.run(
            ["openssl", "verify", "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / f"{role}.pem")],
            capture_output=True,
            text=True,
        )
        assert verify.returncode == 0, verify.stderr
    assert oct((tmp_path / "worker-key.pem").stat().st_mode & 0o777) == "0o600"
