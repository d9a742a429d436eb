"""The registered model (raw TLC rows in, minutes out) and the choice of the trial to register."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from pathlib import Path

import pandas as pd

from taxi_hpo.core.features import Preprocessor
from taxi_hpo.search.scheduler import TrialOutcome
from taxi_hpo.tracking._mlflow import mlflow
from taxi_hpo.tracking.names import ALIAS, BOOSTER_DIR, BOOSTER_FILE, MODEL_NAME, PREPROCESSOR_FILE
from taxi_hpo.tracking.store import TrackingContext, download_artifact


class DurationPyfunc(mlflow.pyfunc.PythonModel):
    """Raw TLC rows in, minutes out: loads the preprocessor and booster bundled with the model."""

    def load_context(self, context):
        """Load the booster and the preprocessor bundled with the model (MLflow calls it when the
        model is loaded)."""
        import xgboost as xgb

        from taxi_hpo.core.features import Preprocessor
        from taxi_hpo.core.models import DurationPredictor

        booster = xgb.Booster()
        booster.load_model(context.artifacts["booster"])
        pre = Preprocessor.from_bytes(Path(context.artifacts["preprocessor"]).read_bytes())
        self._predictor = DurationPredictor(pre, booster)

    def predict(self, context, model_input: pd.DataFrame, params=None):  # hint: no schema warning
        """Predicted trip durations in minutes for the raw TLC rows of ``model_input``."""
        return self._predictor.predict(model_input)


def model_signature():
    """What the registered model reads and returns: the three TLC columns it uses (other columns of
    a raw row are ignored) and minutes out. The location ids are typed ``any``: the TLC's files
    and our data layouts store them as integers, floats or strings, and the model reads all three
    (``data.location_ids``); the distance is a double in every layout. MLflow shows it in the UI
    and checks requests against it: a row without ``DOLocationID`` gets "Model is missing inputs
    ['DOLocationID']" (HTTP 400 from the server) instead of a pandas KeyError."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    inputs = Schema(
        [
            ColSpec(AnyType(), "PULocationID"),
            ColSpec(AnyType(), "DOLocationID"),
            ColSpec("double", "trip_distance"),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec("double", "duration")]))


#: Two raw rows as a request sends them (the first two trips of the 2021-02 green month).
INPUT_EXAMPLE = {"PULocationID": [130, 152], "DOLocationID": [205, 244], "trip_distance": [3.66, 1.10]}


def register_model(
    ctx: TrackingContext, run_id: str, preprocessor_blob: bytes, booster_path: Path, requirements: list[str]
) -> str:
    """Log the bundled pyfunc in the best trial's run and make it ``MODEL_NAME@staging``."""
    import taxi_hpo

    mlflow.set_tracking_uri(ctx.tracking_uri)
    # Its warnings (cloudpickle caution) are expected for this model.
    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        pre_path = Path(tmp) / PREPROCESSOR_FILE
        pre_path.write_bytes(preprocessor_blob)
        with mlflow.start_run(run_id=run_id):
            warnings.filterwarnings("ignore", message=".*Python object as `python_model`.*")
            info = mlflow.pyfunc.log_model(
                name="pyfunc",
                python_model=DurationPyfunc(),
                artifacts={"preprocessor": str(pre_path), "booster": str(booster_path)},
                pip_requirements=requirements,
                code_paths=[str(Path(taxi_hpo.__file__).parent)],
                signature=model_signature(),
                input_example=pd.DataFrame(INPUT_EXAMPLE),
            )
    # MLflow prints "Successfully registered model ..." / "Created version ..." to stderr
    # unconditionally; the run's summary says what was registered, once.
    with contextlib.redirect_stderr(io.StringIO()):
        version = mlflow.register_model(info.model_uri, MODEL_NAME)
    client = ctx.client()
    client.set_registered_model_alias(MODEL_NAME, ALIAS, version.version)
    client.set_model_version_tag(MODEL_NAME, version.version, "parent_run_id", ctx.parent_run_id)
    return str(version.version)


def qualifying(
    outcomes: list[TrialOutcome], max_rmse: float, max_inference_time: float
) -> list[TrialOutcome]:
    """Finished trials under both thresholds, best first; a pruned trial never qualifies."""
    ok = [
        o
        for o in outcomes
        if o.complete
        and o.run_id
        and o.loss < max_rmse
        and o.metrics.get("inference_time", float("inf")) < max_inference_time
    ]
    return sorted(ok, key=lambda o: o.loss)


def requirements() -> list[str]:
    """Pinned requirements of the bundled model: no dependency inference (5–8 s a call)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for dist, name in (
        ("xgboost", "xgboost"),
        ("xgboost-cpu", "xgboost"),
        ("scikit-learn", "scikit-learn"),
        ("pandas", "pandas"),
        ("scipy", "scipy"),
        ("numpy", "numpy"),
    ):
        try:
            pins.append(f"{name}=={version(dist)}")
        except PackageNotFoundError:
            continue
    seen, unique = set(), []
    for pin in pins:
        name = pin.split("==")[0]
        if name not in seen:
            seen.add(name)
            unique.append(pin)
    return unique


def register_best(
    outcomes: list[TrialOutcome],
    preprocessor: Preprocessor,
    ctx: TrackingContext,
    max_rmse: float,
    max_inference_time: float,
) -> str | None:
    """Register the best qualifying trial as ``nyc-taxi-duration@staging``; None when none qualifies."""
    candidates = qualifying(outcomes, max_rmse, max_inference_time)
    if not candidates:
        return None
    best = candidates[0]
    with tempfile.TemporaryDirectory() as tmp:
        booster = download_artifact(ctx, best.run_id, f"{BOOSTER_DIR}/{BOOSTER_FILE}", Path(tmp))
        return register_model(ctx, best.run_id, preprocessor.to_bytes(), booster, requirements())
