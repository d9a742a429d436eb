"""README's first command: ``make run`` with ``ARGS``, in a folder of the user's.

CI itself runs the other one (``make test``) on a clean checkout, install included. Here the
Makefile runs from a folder holding only the months in ``./data`` and the project's
``pyproject.toml`` (the install target's prerequisite, copied with its time, so the venv this
suite runs in counts as installed and nothing is installed again).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent


@pytest.mark.integration
def test_make_run_passes_args_and_reads_the_months_from_data(tmp_path, data_dir, prefect_api_url):
    shutil.copy2(REPO / "pyproject.toml", tmp_path)
    (tmp_path / "data").mkdir()
    for month in ("2021-01", "2021-02"):
        shutil.copy(data_dir / f"green_tripdata_{month}.parquet", tmp_path / "data")
    env = {k: v for k, v in os.environ.items() if k != "TAXI_HPO_DATA_DIR"}
    env["PREFECT_API_URL"] = prefect_api_url
    args = "--trials 2 --workers 1 --rounds 3 --max-depth 4 --no-register --no-report --json"
    proc = subprocess.run(
        ["make", "--no-print-directory", "-f", str(REPO / "Makefile"), "run", f"VENV={VENV}", f"ARGS={args}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == f"{VENV}/bin/taxi-hpo run {args}"  # the run target only: nothing installed
    summary = json.loads(lines[-1])
    assert (summary["trials_done"], summary["registered_version"], summary["report"]) == (2, None, None)
    assert summary["lr_rmse"] == pytest.approx(7.7587, abs=1e-4)  # January and February 2021 from ./data
    assert summary["tracking_uri"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
