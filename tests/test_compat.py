"""What users of 0.1.0 have keeps working: registered models, cached results, preload names.

``tests/fixtures`` holds what taxi-hpo 0.1.0 (commit 689a0be, the flat layout) wrote: a pyfunc
model saved as ``register_model`` logs it (``code/`` is the package it bundled) with the
predictions it gave, and a pickled ``PreparedData`` as Prefect caches the preprocessing.
"""

from __future__ import annotations

import importlib
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
OLD_MODEL = FIXTURES / "model-0.1.0"


def _old_rows() -> tuple[pd.DataFrame, list[float]]:
    saved = json.loads((FIXTURES / "model-0.1.0.json").read_text())
    return pd.DataFrame(saved["rows"]), saved["predictions"]


def test_old_model_loads_with_the_new_package_and_predicts_the_same(monkeypatch):
    import mlflow.pyfunc

    from taxi_hpo.core.features import Preprocessor
    from taxi_hpo.tracking.registry import DurationPyfunc

    monkeypatch.setattr(sys, "path", list(sys.path))  # load_model prepends the model's code/
    model = mlflow.pyfunc.load_model(str(OLD_MODEL))
    # The pickle names taxi_hpo.tracking.DurationPyfunc; with taxi_hpo already imported it
    # resolves to today's class (not the copy bundled in code/), and so does its preprocessor.
    python_model = model.unwrap_python_model()
    assert type(python_model) is DurationPyfunc
    assert type(python_model._predictor.preprocessor) is Preprocessor
    rows, predictions = _old_rows()
    np.testing.assert_allclose(model.predict(rows), predictions, rtol=1e-6)


def test_old_model_pickle_names_modules_that_moved():
    raw = (OLD_MODEL / "python_model.pkl").read_bytes()
    assert b"taxi_hpo.tracking" in raw  # what makes this test about the move
    blob = (OLD_MODEL / "artifacts" / "preprocessor.pkl").read_bytes()
    assert b"taxi_hpo.features" in blob and b"taxi_hpo.core" not in blob
    from taxi_hpo.core.features import Preprocessor

    pre = Preprocessor.from_bytes(blob)
    assert type(pre) is Preprocessor and pre.n_features > 0


def test_old_cached_preprocessing_result_loads_as_todays_class():
    from taxi_hpo.core.features import PreparedData

    raw = (FIXTURES / "prepared-0.1.0.pkl").read_bytes()
    assert b"taxi_hpo.features" in raw
    prepared = pickle.loads(raw)
    assert type(prepared) is PreparedData
    assert prepared.X_train.shape[0] == 300 and prepared.X_valid.shape[1] == prepared.X_train.shape[1]


@pytest.mark.parametrize(
    "old",
    [
        "taxi_hpo.features",
        "taxi_hpo.models",
        "taxi_hpo.data",
        "taxi_hpo.worker_watchdog",
        "taxi_hpo.worker_imports",
        "taxi_hpo.dask_runner",
        "taxi_hpo.worker_data",
        "taxi_hpo.credentials",
        "taxi_hpo.remote",
        "taxi_hpo.registry",
        "taxi_hpo.trials",
        "taxi_hpo.preflight",
        "taxi_hpo.progress",
        "taxi_hpo.bench_runs",
        "taxi_hpo.bench_metrics",
        "taxi_hpo.bench_plots",
    ],
)
def test_old_module_paths_import_the_module_that_holds_the_code(old):
    from taxi_hpo import _compat

    module = importlib.import_module(old)
    new = _compat.MOVED.get(old, old)
    assert module is importlib.import_module(new)
    assert module.__name__ == new  # the real module, its own spec untouched


@pytest.mark.integration  # a fresh Python process that imports MLflow
def test_old_model_serves_in_a_fresh_process():
    """What `mlflow models serve` does: a process that has not imported taxi_hpo loads the model."""
    rows, predictions = _old_rows()
    code = (
        "import sys, json, pandas as pd, mlflow.pyfunc\n"
        f"m = mlflow.pyfunc.load_model({str(OLD_MODEL)!r})\n"
        f"print(json.dumps([float(x) for x in m.predict(pd.DataFrame({rows.to_dict(orient='list')!r}))]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    np.testing.assert_allclose(json.loads(out.stdout.strip().splitlines()[-1]), predictions, rtol=1e-6)
