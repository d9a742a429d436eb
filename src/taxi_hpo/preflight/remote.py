"""Checks before a search runs on an existing scheduler: what remote workers need.

Every trial task carries the flow's settings to its worker, so what the workers need is
decided here, on the client, before anything is submitted:

- a Prefect API that outlives this process: ``PREFECT_API_URL`` must be set (otherwise
  ``taxi-hpo run`` starts a temporary server in this process, on loopback);
- when any worker is on another host (or the scheduler is): an ``http(s)://`` MLflow tracking
  server that serves the artifacts too, not a sqlite file or ``file:`` folder (only this machine
  has it) nor a database URI (each worker would write artifacts to its own disk); and neither
  URL on loopback;
- ``taxi_hpo`` importable on every worker at this client's version, under the same Python and
  Prefect minor versions (tasks and their arguments are pickled), and both servers answering
  from every worker (a probe run there through ``client.run``);
- for ``tls://``: this client's certificates in the dask config;
- for servers that ask for credentials (HTTP 401/403): this client's, from the environment
  (``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``, ``PREFECT_API_AUTH_STRING``),
  accepted by both servers; the flow hands the same to the workers (see ``credentials``).

Each failure is one line.
"""

from __future__ import annotations

import base64
import os
import platform
import urllib.error
import urllib.request
from importlib.metadata import version as installed_version
from pathlib import Path
from urllib.parse import urlsplit

import taxi_hpo
from taxi_hpo import cluster
from taxi_hpo.config import RunConfig, is_local_uri
from taxi_hpo.errors import ClusterError, TrackingError
from taxi_hpo.prefect_api import configured_api_url, configured_credentials

PROBE_TIMEOUT_S = 5.0
# A real API call: MLflow answers /health whatever the Host header, but refuses other calls
# from names outside its --allowed-hosts.
MLFLOW_PROBE_PATH = "/api/2.0/mlflow/experiments/search?max_results=1"
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "::1", "0.0.0.0"}


def check(cfg: RunConfig, timeout_s: float = 10.0) -> dict:
    """Fail early, with one line, when remote workers could not run the search.

    A scheduler on another host is taken to have its workers elsewhere too, so the URLs are
    checked before connecting; for a loopback scheduler, after seeing where its workers are.

    Returns:
        What :func:`cluster.probe_scheduler` found, with each worker's probe result.

    Raises:
        TrackingError: the tracking URI is not one remote workers can use or reach, or the
            server refuses this client's credentials.
        ClusterError: anything else the workers lack, the scheduler cannot be reached, or the
            Prefect API refuses this client's credentials.
    """
    tracking_uri, api_url = cfg.resolved_tracking_uri, configured_api_url()
    check_tls(cfg.address)
    scheduler_host = urlsplit(cfg.address if "://" in cfg.address else f"tcp://{cfg.address}").hostname
    if not is_loopback(scheduler_host):
        check_placement(tracking_uri, api_url, f"scheduler {cfg.address}")
    urls = {
        name: url.rstrip("/") + path
        for name, url, path in (
            ("MLflow tracking server", tracking_uri, MLFLOW_PROBE_PATH),
            ("Prefect API", api_url or "", "/health"),
        )
        if url.startswith(("http://", "https://"))
    }
    info = cluster.probe_scheduler(
        cfg.address, timeout_s, worker_probe=make_worker_probe(urls, PROBE_TIMEOUT_S)
    )
    probes = info["probes"]
    _check_probes_ran(probes)
    remote = sorted(addr for addr in probes if not is_loopback(urlsplit(addr).hostname))
    check_placement(tracking_uri, api_url, f"worker {remote[0]}" if remote else None)
    check_workers(probes, tracking_uri, api_url, client_environment())
    check_credentials(tracking_uri, api_url)
    return info


def check_cluster_workers(client, tracking_uri: str) -> None:
    """The same checks for a cluster ``--cluster-class`` created in the flow, once its first
    workers are there: the stores from where they are, then the probe's findings."""
    api_url = configured_api_url()
    urls = {
        name: url.rstrip("/") + path
        for name, url, path in (
            ("MLflow tracking server", tracking_uri, MLFLOW_PROBE_PATH),
            ("Prefect API", api_url or "", "/health"),
        )
        if url.startswith(("http://", "https://"))
    }
    probes = client.run(make_worker_probe(urls, PROBE_TIMEOUT_S), on_error="return")
    _check_probes_ran(probes)
    remote = sorted(addr for addr in probes if not is_loopback(urlsplit(addr).hostname))
    if remote:  # a temporary API server of this process is fine for workers of this machine
        check_placement(tracking_uri, api_url, f"worker {remote[0]}")
    check_workers(probes, tracking_uri, api_url or "", client_environment())


# -- where the servers are: no network ---------------------------------------------------------


def check_placement(tracking_uri: str, api_url: str | None, remote: str | None) -> None:
    """Raise when the stores cannot serve workers; ``remote`` names one on another host, if any.

    Args:
        tracking_uri: the MLflow tracking URI the search will use.
        api_url: ``PREFECT_API_URL``, or None when unset.
        remote: e.g. ``"worker tcp://10.0.0.7:40331"``; None when every worker is on loopback.
    """
    if not api_url:
        raise ClusterError(
            "--address needs a Prefect API that outlives this process, but PREFECT_API_URL is not set: start "
            "one (cluster/local/start-prefect.sh) and export PREFECT_API_URL=http://HOST:4200/api"
        )
    if remote is None:
        return
    if is_local_uri(tracking_uri):
        raise TrackingError(
            f"--tracking-uri {tracking_uri} is a store on this machine that the {remote} cannot "
            "open: start a "
            f"tracking server (cluster/local/start-mlflow.sh) and pass --tracking-uri http://HOST:5000"
        )
    if urlsplit(tracking_uri).scheme not in ("http", "https", "databricks"):
        raise TrackingError(
            f"--tracking-uri {tracking_uri} is a database: each worker would write artifacts to "
            "its own disk; "
            f"run `mlflow server --backend-store-uri {tracking_uri} --artifacts-destination ...` and pass "
            f"its http:// URI instead"
        )
    for what, url, fix in (
        ("--tracking-uri", tracking_uri, "--tracking-uri http://HOST:5000"),
        ("PREFECT_API_URL", api_url, "PREFECT_API_URL=http://HOST:4200/api"),
    ):
        if is_loopback(urlsplit(url).hostname):
            raise ClusterError(
                f"{what} {url} is loopback, which the {remote} cannot reach: give an address "
                f"of this host that it can ({fix})"
            )


def check_tls(address: str) -> None:
    """A ``tls://`` scheduler needs this client's CA and certificate from the dask config."""
    if not address.startswith("tls://"):
        return
    files = cluster.tls_client_files()
    missing = [
        what for what, key in (("CA file", "ca_file"), ("client certificate", "cert")) if not files[key]
    ]
    if missing:
        raise ClusterError(
            f"--address {address} uses TLS but the dask config gives no {' and no '.join(missing)}: export "
            f"DASK_CONFIG=<dir>/client.yaml as made by cluster/tls/make-certs.sh <dir>"
        )
    for key, path in files.items():
        if path and not Path(path).is_file():
            raise ClusterError(
                f"TLS {key} {path} (from the dask config) does not exist: fix DASK_CONFIG "
                f"or make the files with cluster/tls/make-certs.sh"
            )


# -- credentials: this client's, against each server ------------------------------------------

CREDENTIALS_HINT = {
    "MLflow": (
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD",
        "cluster/local/start-mlflow.sh writes both to <run dir>/mlflow-auth.env: source it",
    ),
    "Prefect": (
        "PREFECT_API_AUTH_STRING",
        "cluster/local/start-prefect.sh writes it to <run dir>/prefect-auth.env: source it",
    ),
}


def check_credentials(tracking_uri: str, api_url: str | None, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """One line when the tracking server or the Prefect API asks for credentials (HTTP 401, or
    403 from MLflow's permissions) and this process has none, or the wrong ones.

    Makes one authenticated call to each ``http(s)://`` server with what the clients would send.
    A server that does not answer is left to the reachability checks.
    """
    if tracking_uri.startswith(("http://", "https://")):
        user, password = (
            os.environ.get("MLFLOW_TRACKING_USERNAME"),
            os.environ.get("MLFLOW_TRACKING_PASSWORD"),
        )
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        header, given = (
            None,
            " and ".join(
                n
                for n, v in (("MLFLOW_TRACKING_USERNAME", user), ("MLFLOW_TRACKING_PASSWORD", password))
                if not v
            ),
        )
        if user and password:
            header, given = _basic(f"{user}:{password}"), f"MLFLOW_TRACKING_USERNAME={user} and its password"
        elif token:
            header, given = f"Bearer {token}", "MLFLOW_TRACKING_TOKEN"
        _check_server(
            "MLflow",
            "tracking server",
            tracking_uri,
            tracking_uri.rstrip("/") + MLFLOW_PROBE_PATH,
            header,
            given,
            timeout_s,
            TrackingError,
        )
    if api_url and api_url.startswith(("http://", "https://")):
        auth, key = configured_credentials()
        header, given = None, "PREFECT_API_AUTH_STRING"
        if auth:
            header, given = _basic(auth), "PREFECT_API_AUTH_STRING"
        elif key:
            header, given = f"Bearer {key}", "PREFECT_API_KEY"
        _check_server(
            "Prefect",
            "API",
            api_url,
            api_url.rstrip("/") + "/admin/version",
            header,
            given,
            timeout_s,
            ClusterError,
        )


def _basic(user_colon_password: str) -> str:
    return "Basic " + base64.b64encode(user_colon_password.encode()).decode()


def _check_server(
    kind: str, what: str, url: str, probe: str, header: str | None, given: str, timeout_s: float, error: type
) -> None:
    """``header``: the Authorization this client sends (None: none); ``given``: the variables it
    came from, or (without a header) the ones missing."""
    request = urllib.request.Request(probe, headers={"Authorization": header} if header else {})
    try:
        urllib.request.urlopen(request, timeout=timeout_s).close()
        return
    except urllib.error.HTTPError as exc:
        code, body = exc.code, _first_line(exc)
    except Exception:  # noqa: BLE001 - unreachable: the reachability checks say so
        return
    names, where = CREDENTIALS_HINT[kind]
    if code == 401:
        if header is None:
            raise error(
                f"{kind} {what} {url} asks for credentials (HTTP 401) and {given} "
                f"{'are' if ' and ' in given else 'is'} not set: export {names} ({where})"
            )
        raise error(
            f"{kind} {what} {url} refused the credentials of {given} (HTTP 401): fix {names} ({where})"
        )
    if code == 403 and kind == "MLflow" and "Host header" not in body:
        raise error(
            f"{kind} {what} {url} denied {given if header else 'a client without credentials'} "
            f"(HTTP 403 {body}): give that user permission, or use {names} of one that has it"
        )


def _first_line(exc: urllib.error.HTTPError) -> str:
    try:
        text = exc.read(300).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001
        text = ""
    return " ".join(text.split())[:120] or exc.reason or ""


# -- what the workers report ------------------------------------------------------------------


def client_environment() -> dict:
    """This process's side of the version comparison."""
    return {
        "taxi_hpo": taxi_hpo.__version__,
        "python": platform.python_version(),
        "prefect": installed_version("prefect"),
    }


def make_worker_probe(urls: dict[str, str], timeout_s: float):
    """A function for ``client.run``: versions, OMP threads, and which ``urls`` fail from there.

    Built inside a function so that cloudpickle sends it by value: it must run on a worker
    where ``taxi_hpo`` is not importable, to say so.
    """

    def probe() -> dict:
        import importlib
        import os
        import platform
        import socket
        import urllib.error
        import urllib.request

        def version(module: str) -> str | None:
            try:
                return importlib.import_module(module).__version__
            except ImportError:
                return None

        unreachable = {}
        for name, url in urls.items():
            try:
                urllib.request.urlopen(url, timeout=timeout_s).close()
            except urllib.error.HTTPError as exc:
                if exc.code == 403:  # answered, but will refuse the work: say so now
                    unreachable[name] = (
                        "HTTP 403 Forbidden; for MLflow, add this host name to --allowed-hosts"
                    )
                # other codes (401: the probe carries no credentials; the flow hands this client's
                # to the workers before the search, see credentials): it answered, so it is reachable
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                unreachable[name] = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        return {
            "taxi_hpo": version("taxi_hpo"),
            "prefect": version("prefect"),
            "python": platform.python_version(),
            "host": socket.gethostname(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "unreachable": unreachable,
        }

    return probe


def check_workers(probes: dict, tracking_uri: str, api_url: str, client: dict) -> None:
    """Raise the first problem in the workers' probe results: versions, then reachability."""
    _check_versions(probes, client)
    for addr, result in sorted(probes.items()):
        for name, reason in sorted(result["unreachable"].items()):
            mlflow = name.startswith("MLflow")
            error = TrackingError if mlflow else ClusterError
            raise error(
                f"worker {addr} (host {result['host']}) cannot reach the {name} "
                f"{tracking_uri if mlflow else api_url} ({reason}): make it listen on an address the "
                f"workers can reach, or fix the URL"
            )


def _check_probes_ran(probes: dict) -> None:
    for addr, result in sorted(probes.items()):
        if isinstance(result, BaseException):
            raise ClusterError(
                f"worker {addr} could not run the pre-flight probe "
                f"({type(result).__name__}: {result}): check its log"
            )


def _check_versions(probes: dict, client: dict) -> None:
    missing = sorted(addr for addr, r in probes.items() if r["taxi_hpo"] is None)
    if missing:
        raise ClusterError(
            f"taxi_hpo is not importable on {len(missing)} of {len(probes)} workers "
            f"({', '.join(missing[:3])}): "
            f"install taxi-hpo {client['taxi_hpo']} in the workers' environment and restart them"
        )
    for key, name, same in (
        ("taxi_hpo", "taxi_hpo", _same),
        ("python", "Python", _same_minor),
        ("prefect", "Prefect", _same_minor),
    ):
        for addr, result in sorted(probes.items()):
            if not same(result[key], client[key]):
                raise ClusterError(
                    f"worker {addr} runs {name} {result[key]} but this client runs {client[key]}: "
                    f"install the same version on both (tasks are pickled between them)"
                )


def is_loopback(host: str | None) -> bool:
    """True for names and addresses that mean "this machine" wherever they are used."""
    if not host:
        return False
    return host.lower() in _LOOPBACK_NAMES or host.startswith("127.")


def _same(a: str | None, b: str | None) -> bool:
    return a == b


def _same_minor(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and a.split(".")[:2] == b.split(".")[:2]
