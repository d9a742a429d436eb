"""``taxi-hpo serve``: relative months, flag checks, and a real deployment run once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from taxi_hpo import cli, serve
from taxi_hpo.errors import ConfigError
from taxi_hpo.tracking.names import WARM_FROM_TAG

VENV_BIN = Path(sys.executable).parent
DEPLOYMENT = f"{serve.FLOW_NAME}/test-weekly"


@pytest.mark.parametrize(
    "spec, when, expected",
    [
        ("prev-2", datetime(2021, 3, 15), "2021-01"),
        ("prev-1", datetime(2021, 1, 4), "2020-12"),
        ("prev-14", datetime(2021, 3, 1), "2020-01"),
        ("prev-0", datetime(2021, 3, 1), "2021-03"),
        ("2021-02", datetime(2030, 1, 1), "2021-02"),
        ("/data/x.parquet", datetime(2030, 1, 1), "/data/x.parquet"),
    ],
)
def test_resolve_month(spec, when, expected):
    assert serve.resolve_month(spec, when) == expected


@pytest.mark.parametrize("spec", ["last-2", "2021-13", "/no/such/file.parquet"])
def test_bad_month_spec_refused(spec):
    with pytest.raises(ConfigError, match="--train"):
        serve.check_month_spec(spec, "--train")


def test_bad_cron_is_one_line_and_exit_2(capsys):
    assert cli.main(["serve", "--cron", "every monday"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--cron 'every monday'" in err


@pytest.mark.integration
def test_each_deployment_run_takes_the_months_of_its_date_and_starts_where_the_last_ended(
    prefect_api_url, data_dir, tmp_path
):
    from prefect.client.orchestration import get_client

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [
            str(VENV_BIN / "taxi-hpo"),
            "serve",
            "--cron",
            "0 3 * * 1",
            "--name",
            "test-weekly",
            "--train",
            "prev-2",
            "--valid",
            "prev-1",
            "--data-dir",
            str(data_dir),
            "--tracking-uri",
            tracking_uri,
            "--trials",
            "2",
            "--workers",
            "1",
            "--rounds",
            "3",
            "--max-depth",
            "5",
            "--no-register",
            "--no-report",
            "--warm-start",
            "latest",
            "--warm-start-trials",
            "1",
        ],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PREFECT_API_URL": prefect_api_url, "PREFECT_RUNNER_POLL_FREQUENCY": "1"},
    )
    try:
        with get_client(sync_client=True) as client:
            deployment = _wait_for(lambda: _deployment(client), 90, proc, tmp_path)
            assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * 1"]
            config = deployment.parameters["config"]
            assert (config["train"], config["valid"], config["trials"]) == ("prev-2", "prev-1", 2)

            # A run for 15 March 2021 trains on January and validates on February.
            run = _run_once(client, deployment, datetime(2021, 3, 15, 3, tzinfo=UTC), proc, tmp_path)
            assert run.state.is_completed(), run.state.message
            mlflow_client = MlflowClient(tracking_uri)
            (first,) = _searches(mlflow_client)
            assert first.info.status == "FINISHED" and first.data.params["trials"] == "2"
            assert (first.data.params["train"], first.data.params["valid"]) == ("2021-01", "2021-02")
            assert WARM_FROM_TAG not in str([r.data.tags for r in _trials_of(mlflow_client, first)])  # cold

            # The next month's run (15 April 2023: February and March) starts where that one ended.
            run = _run_once(client, deployment, datetime(2023, 4, 15, 3, tzinfo=UTC), proc, tmp_path)
            assert run.state.is_completed(), run.state.message
        second = next(r for r in _searches(mlflow_client) if r.info.run_id != first.info.run_id)
        assert (second.data.params["train"], second.data.params["valid"]) == ("2023-02", "2023-03")
        warm = {
            r.data.tags["trial_id"]: r.data.tags.get(WARM_FROM_TAG) for r in _trials_of(mlflow_client, second)
        }
        best = min(_trials_of(mlflow_client, first), key=lambda r: r.data.metrics["rmse_valid"])
        assert warm == {"0": f"{first.info.run_id}:{best.data.tags['trial_id']}", "1": None}, warm
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _run_once(client, deployment, scheduled_time: datetime, proc, tmp_path):
    """A run of ``deployment`` for ``scheduled_time``, once it has ended."""
    from prefect.deployments import run_deployment

    run = run_deployment(deployment.id, scheduled_time=scheduled_time, timeout=0, as_subflow=False)
    return _wait_for(lambda: _final(client, run.id), 240, proc, tmp_path)


def _experiment_ids(client) -> list[str]:
    return [e.experiment_id for e in client.search_experiments()]


def _searches(client) -> list:
    return [
        r for r in client.search_runs(_experiment_ids(client)) if r.data.tags.get("taxi_hpo.role") == "search"
    ]


def _trials_of(client, parent) -> list:
    return [
        r
        for r in client.search_runs([parent.info.experiment_id])
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id and "trial_id" in r.data.tags
    ]


def _deployment(client):
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name(DEPLOYMENT)
    except ObjectNotFound:
        return None


def _final(client, flow_run_id):
    run = client.read_flow_run(flow_run_id)
    return run if run.state and run.state.is_final() else None


def _wait_for(fetch, timeout_s: float, proc: subprocess.Popen, tmp_path: Path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = fetch()
        if found is not None:
            return found
        if proc.poll() is not None:
            pytest.fail(
                f"taxi-hpo serve exited {proc.returncode}:\n{(tmp_path / 'serve.log').read_text()[-3000:]}"
            )
        time.sleep(0.5)
    pytest.fail(f"nothing after {timeout_s} s:\n{(tmp_path / 'serve.log').read_text()[-3000:]}")
