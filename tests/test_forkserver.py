"""Local workers forked from the fork server (cluster.forkserver) are the workers a spawn makes:
the same environment, Prefect's settings their nanny gave them, the trial code imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration  # real LocalClusters in a fresh process each

SCRIPT = r"""
import json, os, sys
import distributed
from taxi_hpo.cluster import forkserver, spec
from taxi_hpo.flows import warm

# the server is started with one API URL, the workers' nanny gives them another
forked = warm.start_fork_server("http://127.0.0.1:9/api", 2, "sqlite:///mlflow.db")
local = spec.ClusterSpec(workers=2, threads_per_worker=2).start_local(
    warm.worker_env("http://127.0.0.1:10/api", "sqlite:///mlflow.db"))

def probe():
    import os, sys
    from prefect.settings import PREFECT_API_URL
    names = ("PREFECT_API_URL", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
             "MALLOC_TRIM_THRESHOLD_", "TAXI_HPO_WARM_IMPORTS")
    return {"ppid": os.getppid(), "env": {n: os.environ.get(n) for n in names},
            "api_url": PREFECT_API_URL.value(),
            "imported": all(m in sys.modules for m in ("xgboost", "mlflow", "taxi_hpo.flows.tasks")),
            "database_store": "mlflow.store.tracking.sqlalchemy_store" in sys.modules}

try:
    with distributed.Client(local.address()) as client:
        workers = list(client.run(probe).values())
finally:
    local.close()
print(json.dumps({"forked": forked, "pid": os.getpid(), "workers": workers}))
"""


def _workers(method: str, tmp_path) -> dict:
    env = {**os.environ, "TAXI_HPO_WORKER_START": method, "TAXI_HPO_DASHBOARD": ":0"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_forked_workers_are_what_spawned_ones_are(tmp_path):
    forked, spawned = _workers("forkserver", tmp_path), _workers("spawn", tmp_path)
    assert forked["forked"] and not spawned["forked"]
    assert len(forked["workers"]) == len(spawned["workers"]) == 2
    # a spawned worker is the nanny's (this process's) child; a forked one the server's
    assert {w["ppid"] for w in spawned["workers"]} == {spawned["pid"]}
    assert len({w["ppid"] for w in forked["workers"]}) == 1
    assert forked["workers"][0]["ppid"] != forked["pid"]
    expected = {
        "PREFECT_API_URL": "http://127.0.0.1:10/api",
        "OMP_NUM_THREADS": "2",
        "MKL_NUM_THREADS": "2",
        "OPENBLAS_NUM_THREADS": "2",
        "MALLOC_TRIM_THRESHOLD_": "65536",
    }
    for worker in forked["workers"] + spawned["workers"]:
        assert {k: worker["env"][k] for k in expected} == expected, worker
        assert worker["api_url"] == "http://127.0.0.1:10/api", worker  # the nanny's, not the server's
    assert all(w["imported"] for w in forked["workers"])  # before the worker took any task
    assert all(w["database_store"] for w in forked["workers"])  # a sqlite store: MLflow's ORM too


def test_only_a_database_store_is_imported_ahead():
    from taxi_hpo.flows import warm

    for uri in ("sqlite:///mlflow.db", "postgresql://u@h/db", "postgresql+psycopg://u@h/db"):
        assert warm.warm_imports(uri)[-1] == warm.DATABASE_STORE, uri
    for uri in ("http://head:5000", "https://head", "file:///tmp/mlruns", None):
        assert warm.DATABASE_STORE not in warm.warm_imports(uri), uri


def test_the_server_keeps_dasks_own_pre_spawn_default():
    """The fork server's environment repeats Dask's pre-spawn default (glibc reads it when a
    process starts): it must follow Dask's."""
    import dask.config
    import distributed  # noqa: F401 - loads distributed's defaults

    from taxi_hpo.cluster import forkserver

    defaults = dask.config.get("distributed.nanny.pre-spawn-environ")
    assert {k: str(v) for k, v in defaults.items() if k not in forkserver.THREAD_ENV} == forkserver.PRE_SPAWN
