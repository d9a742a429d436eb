"""Several whole searches at once on one folder: a fresh one, then the same one again.

What a user does in two (or four) terminals: ``taxi-hpo run`` with different seeds, started
together, on one sqlite store. The first four also start a temporary Prefect API server each on
one new Prefect database (no ``PREFECT_API_URL``, a fresh ``PREFECT_HOME``): MLflow's and
Prefect's schema migrations both race there. Each search must end whole: its own parent, its
trials, one preprocessor artifact, its own registered version, nothing left RUNNING.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mlflow.tracking import MlflowClient

from helpers import start_cli
from taxi_hpo import tracking

SEARCH = ("--trials", "2", "--workers", "1", "--rounds", "2", "--max-depth", "4")
SEARCH += ("--experiment", "shared", "--max-rmse", "100", "--no-report")


def _together(folder: Path, data_dir: Path, seeds, api_url: str | None, env: dict) -> list[dict]:
    procs = [
        start_cli(folder, api_url, "--data-dir", str(data_dir), "--seed", str(s), *SEARCH, env=env)
        for s in seeds
    ]
    summaries = []
    for proc in procs:
        out, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        summaries.append(json.loads(out.strip().splitlines()[-1]))
    return summaries


def _each_whole(uri: str, summaries: list[dict]) -> None:
    client = MlflowClient(tracking_uri=uri)
    parents = [s["parent_run_id"] for s in summaries]
    assert len(set(parents)) == len(parents), parents
    for s in summaries:
        assert s["trials_done"] == 2 and s["trials_failed"] == 0, s
        children = client.search_runs(
            [client.get_run(s["parent_run_id"]).info.experiment_id],
            f"tags.mlflow.parentRunId = '{s['parent_run_id']}'",
        )
        trials = sorted(
            (c.data.tags[tracking.TRIAL_TAG], c.info.status)
            for c in children
            if tracking.TRIAL_TAG in c.data.tags
        )
        assert trials == [("0", "FINISHED"), ("1", "FINISHED")], (s["parent_run_id"], trials)
        assert all(c.info.status == "FINISHED" for c in children), s["parent_run_id"]
        assert tracking.count_preprocessor_artifacts(uri, s["parent_run_id"]) == 1
        assert client.get_run(s["parent_run_id"]).info.status == "FINISHED"


def test_four_searches_at_once_on_a_fresh_folder_then_four_more(tmp_path, data_dir, prefect_api_url):
    folder = tmp_path / "work"
    folder.mkdir()
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    fresh_prefect = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}  # a new database

    first = _together(folder, data_dir, (1, 2, 3, 4), None, fresh_prefect)
    _each_whole(uri, first)
    assert sorted(int(s["registered_version"]) for s in first) == [1, 2, 3, 4]

    # The same folder again, now with its store made, on the session's running Prefect API.
    again = _together(folder, data_dir, (5, 6, 7, 8), prefect_api_url, dict(os.environ))
    _each_whole(uri, first + again)
    assert sorted(int(s["registered_version"]) for s in again) == [5, 6, 7, 8]
    experiments = [e.name for e in MlflowClient(tracking_uri=uri).search_experiments()]
    assert experiments.count("shared") == 1, experiments
