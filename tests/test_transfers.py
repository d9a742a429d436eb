""" "The data travels once", counted by Dask itself: a search of 20 trials on two real
``dask worker`` processes, then each worker's own transition log and transfer counters.

With the data scattered (before worker_data), this test failed: one worker fetched the data
from its peer twice, after Dask's Active Memory Manager had dropped its copy between trials."""

from __future__ import annotations

import sys

import cloudpickle
import pytest

from helpers import finish, start_cli, wait_for

pytestmark = pytest.mark.integration
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/


def _what_arrived(dask_worker) -> dict:
    """Runs in each worker: what came by scatter, what came from peers (gather_dep), what left,
    and how many times the search's data plugin was set up here."""
    from taxi_hpo.cluster import worker_data

    scattered = [entry[0] for entry in dask_worker.state.log if entry[1] == "receive-from-scatter"]
    peer_fetches = [entry for entry in dask_worker.state.log if entry[0] == "gather-dependencies"]
    return {
        "scattered": scattered,
        "peer_fetches": len(peer_fetches),
        "incoming_total": dask_worker.state.transfer_incoming_count_total,
        "incoming_log": len(dask_worker.transfer_incoming_log),
        "fetched": [
            (str(k), e["total"], e["who"]) for e in dask_worker.transfer_incoming_log for k in e["keys"]
        ],
        "outgoing_total": dask_worker.transfer_outgoing_count_total,
        "outgoing_bytes": dask_worker.transfer_outgoing_bytes_total,
        "log_len": len(dask_worker.state.log),
        "log_max": dask_worker.state.log.maxlen,
        "arrivals": dict(worker_data.ARRIVALS),
        "held": list(worker_data._STASH),
    }


def test_the_data_reaches_each_worker_once_in_a_20_trial_search(
    dask_processes, data_dir, workdir, prefect_api_url
):
    dask_processes.worker("w1")
    dask_processes.worker("w2")
    proc = start_cli(
        workdir,
        prefect_api_url,
        "--address",
        dask_processes.address,
        "--data-dir",
        str(data_dir),
        "--trials",
        "20",
        "--rounds",
        "3",
        "--max-depth",
        "5",
        "--no-register",
        "--no-report",
    )
    summary = finish(proc)
    assert (summary["trials_done"], summary["trials_failed"]) == (20, 0)
    per_worker = dask_processes.client.run(_what_arrived)
    assert len(per_worker) == 2
    ran_on = {t["worker"].split(":")[1] for t in summary["trials"]}
    assert len(ran_on) == 2, "both workers must have run trials for the count to mean anything"
    for address, seen in per_worker.items():
        assert seen["log_len"] < seen["log_max"], "the transition log wrapped: the count would be partial"
        # The prepared data arrived once (its worker plugin set up once), nothing by scatter ...
        assert len(seen["arrivals"]) == 1 and list(seen["arrivals"].values()) == [1], (
            address,
            seen["arrivals"],
        )
        assert seen["scattered"] == [], (address, seen["scattered"])
        # ... no worker fetched anything from a peer: 20 trials, no second copy; what left the
        # workers is the trials' small results, gathered by the flow ...
        assert seen["peer_fetches"] == seen["incoming_total"] == seen["incoming_log"] == 0, (
            address,
            seen["fetched"],
        )
        assert 0 < seen["outgoing_total"] <= 20 and seen["outgoing_bytes"] < summary["data_bytes"] / 100, (
            address,
            seen,
        )
        # ... and the search's end freed it (a long-lived cluster keeps nothing of it).
        assert seen["held"] == [], (address, seen["held"])
    keys = {next(iter(seen["arrivals"])) for seen in per_worker.values()}
    assert len(keys) == 1, keys  # the same search's data on both workers
    assert summary["submit_bytes_max"] < summary["data_bytes"] / 1000


_KILLED_FLOW = """
import sys, time
from distributed import Client
from taxi_hpo.cluster import credentials, worker_data

client = Client(sys.argv[1])
ref = worker_data.share(client, {"rows": list(range(1000))})
name = credentials.hand_to_workers(client, {"MLFLOW_TRACKING_PASSWORD": "killed-flow-secret"})
print(ref.key, name, flush=True)
time.sleep(600)
"""


def _held(dask_worker) -> dict:
    import os

    from taxi_hpo.cluster import worker_data

    return {"data": sorted(worker_data._STASH), "password": os.environ.get("MLFLOW_TRACKING_PASSWORD")}


def test_a_killed_flows_data_and_credentials_leave_the_workers(dask_processes, tmp_path):
    """A flow SIGKILLed on a long-lived cluster never unregisters its plugins: the scheduler
    drops them when it drops the flow's client; another client's stay."""
    import os
    import signal
    import subprocess

    from taxi_hpo.cluster import worker_data

    dask_processes.worker("w1")
    flow = subprocess.Popen(
        [sys.executable, "-c", _KILLED_FLOW, dask_processes.address],
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        key, credentials_name = flow.stdout.readline().split()
        survivor = worker_data.share(dask_processes.client, {"rows": [1]})  # a search that is still running
        (held,) = dask_processes.client.run(_held).values()
        assert held == {"data": sorted([key, survivor.key]), "password": "killed-flow-secret"}
        os.kill(flow.pid, signal.SIGKILL)
        flow.wait(10)
        gone = {"data": [survivor.key], "password": None}
        wait_for(
            lambda: list(dask_processes.client.run(_held).values()) == [gone],
            30,
            "the killed flow's data and credentials to leave the worker",
        )
        plugins = dask_processes.client.run_on_scheduler(
            lambda dask_scheduler: list(dask_scheduler.worker_plugins)
        )
        assert survivor.plugin_name in plugins and credentials_name not in plugins
        assert not [p for p in plugins if key in p]
        # a worker that joins now gets the running search's data, nothing of the killed one
        dask_processes.worker("w2")
        dask_processes.client.wait_for_workers(2, timeout=60)
        assert list(dask_processes.client.run(_held).values()) == [gone, gone]
        worker_data.unshare(dask_processes.client, survivor)
    finally:
        flow.kill()
