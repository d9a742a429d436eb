"""Bad input: one line on stderr, exit 2, no traceback, no run left RUNNING (real CLI processes)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bad_files(data_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    corrupt = root / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 not really parquet")
    columns = root / "columns.parquet"
    pd.read_parquet(data_dir / "green_tripdata_2023-01.parquet").drop(columns=["PULocationID"]).to_parquet(columns)
    empty = root / "empty.parquet"
    raw = pd.read_parquet(data_dir / "green_tripdata_2023-01.parquet").head(100)
    raw["lpep_dropoff_datetime"] = raw["lpep_pickup_datetime"]
    raw.to_parquet(empty)
    return {"corrupt": corrupt, "columns": columns, "empty": empty, "missing": root / "missing.parquet"}


def cli(workdir: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}  # never reached: checks come first
    return subprocess.run([sys.executable, "-m", "taxi_hpo.cli", "run", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=timeout)


CASES = {
    "missing file": (["--train", "{missing}"], "does not exist"),
    "corrupt parquet": (["--train", "{corrupt}"], "not a readable parquet"),
    "missing columns": (["--valid", "{columns}"], "lacks column(s) PULocationID"),
    "nothing after filter": (["--train", "{empty}"], "no trips of 1–60 minutes"),
    "bad month": (["--train", "2021-13"], "is not a month"),
    "trials <= 0": (["--trials", "0"], "--trials must be a positive"),
    "workers <= 0": (["--workers", "-1"], "--workers must be a positive"),
    "threads <= 0": (["--threads-per-worker", "0"], "--threads-per-worker must be a positive"),
    "bad timeout": (["--timeout", "soon"], "--timeout 'soon' is not a duration"),
    "kill without a budget": (["--timeout-kill"], "--timeout-kill needs --timeout"),
    "unknown pruning rule": (["--prune", "hyperband"], "invalid choice: 'hyperband'"),
    "warm start from no search": (["--warm-start", "0123456789abcdef"], "no search run 0123456789abcdef"),
    "batch size <= 0": (["--mode", "batch", "--batch-size", "0"], "--batch-size must be a positive"),
    "unreachable scheduler": (["--address", "tcp://127.0.0.1:9"], "Dask scheduler tcp://127.0.0.1:9 is unreachable"),
    "unreachable tracking": (["--tracking-uri", "http://127.0.0.1:9"], "tracking server http://127.0.0.1:9 is unreachable"),
    "unknown resume id": (["--resume", "0123456789abcdef"], "no search run 0123456789abcdef"),
    "max depth below bound": (["--max-depth", "3"], "below the space's lower bound 4"),
    "not a number": (["--trials", "many"], "invalid int value"),
    "unknown cluster class": (["--cluster-class", "nosuch_pkg.Cluster"], "cannot import nosuch_pkg"),
    "not a cluster class": (["--cluster-class", "distributed.NoSuchCluster"], "has no cluster class 'NoSuchCluster'"),
    "cluster kwargs without a class": (["--cluster-kwargs", "{{}}"], "--cluster-kwargs needs --cluster-class"),
    "cluster kwargs not a mapping": (["--cluster-class", "distributed.LocalCluster", "--cluster-kwargs", "[1, 2]"],
                                     "must be a mapping"),
    "cluster kwargs not JSON": (["--cluster-class", "distributed.LocalCluster", "--cluster-kwargs", "{{n_workers"],
                                "is not valid JSON/YAML"),
    "adapt without a class": (["--adapt", "1:3"], "--adapt needs --cluster-class"),
    "adapt backwards": (["--cluster-class", "distributed.LocalCluster", "--adapt", "3:1"], "0 <= MIN <= MAX"),
    "adapt not a range": (["--cluster-class", "distributed.LocalCluster", "--adapt", "three"], "give MIN:MAX"),
    "address and cluster class": (["--address", "tcp://127.0.0.1:9", "--cluster-class", "distributed.LocalCluster"],
                                  "give one of them"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_exit_2(case, bad_files, data_dir, tmp_path):
    args, expected = CASES[case]
    args = [a.format(**{k: str(v) for k, v in bad_files.items()}) for a in args]
    proc = cli(tmp_path, "--data-dir", str(data_dir), *args)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert expected in lines[0] and "Traceback" not in proc.stderr
    db = tmp_path / "mlflow.db"
    if db.exists():
        with sqlite3.connect(db) as conn:
            assert conn.execute("select count(*) from runs where status = 'RUNNING'").fetchone()[0] == 0
