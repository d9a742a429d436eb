"""What the report reads from the store and writes back to it."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from taxi_hpo.tracking._mlflow import MlflowClient
from taxi_hpo.tracking.store import retrying


def get_run(tracking_uri: str, run_id: str):
    """The run as MLflow holds it (``info``: status, start and end times; ``data``: params,
    metrics, tags)."""
    client = MlflowClient(tracking_uri=tracking_uri)
    return retrying(lambda: client.get_run(run_id))


def log_artifacts(tracking_uri: str, run_id: str, files: Iterable[Path], artifact_dir: str) -> None:
    """Log each file under ``artifact_dir`` of the run, retrying a busy store."""
    client = MlflowClient(tracking_uri=tracking_uri)
    for file in files:
        retrying(lambda file=file: client.log_artifact(run_id, str(file), artifact_dir))


def experiment_id_by_name(tracking_uri: str, name: str) -> str | None:
    """The id of experiment ``name``, or None when the store has none of that name."""
    experiment = MlflowClient(tracking_uri).get_experiment_by_name(name)
    return experiment.experiment_id if experiment else None
