"""Every script in benchmarks/ runs, at a tiny size, as its usage line says: so none rots.

The figures are not checked (they are what the scripts are for, at their real sizes); what
each writes and prints is: the files it names, one object per measurement, its trial counts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"


def bench(script: str, *args: str, cwd: Path, env: dict | None = None, timeout: float = 400) -> list[dict]:
    """Run ``benchmarks/SCRIPT ARGS``; it must exit 0. The JSON objects it printed, one a line."""
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    objects = []
    for line in proc.stdout.splitlines():
        try:
            objects.append(json.loads(line))
        except ValueError:
            continue
    return objects or [proc.stdout]


def test_rungs(data_dir, tmp_path):
    bench(
        "rungs.py",
        "--points",
        "4",
        "--rounds",
        "4",
        "--max-depth",
        "5",
        "--data-dir",
        str(data_dir),
        "--out",
        str(tmp_path / "out"),
        cwd=tmp_path,
    )
    saved = json.loads((tmp_path / "out" / "rungs.json").read_text())
    assert len(saved["fits"]) == 4
    assert all(f["rmse"] and len(f["cpu_s"]) == len(f["rmse"]) for f in saved["fits"])
    table = (tmp_path / "out" / "rungs.md").read_text().splitlines()
    assert [line.split("|")[1].strip().split()[0] for line in table[2:]] == ["1", "2", "3"]


def test_fidelities(data_dir, tmp_path):
    bench(
        "fidelities.py",
        "--points",
        "4",
        "--rounds",
        "3",
        "--max-depth",
        "4",
        "--fractions",
        "1/9",
        "--at-rounds",
        "2",
        "--data-dir",
        str(data_dir),
        "--out",
        str(tmp_path / "out"),
        cwd=tmp_path,
    )
    pair = json.loads((tmp_path / "out" / "fidelities.json").read_text())["pairs"][0]
    assert set(pair["fits"][0]) == {"1", "1/9 uniform", "1/9 stratified"}
    # a sample keeps about a ninth of the rows and, compacted, only the columns it has values in
    assert all(
        abs(n - pair["rows"] / 9) < pair["rows"] / 90 for k, n in pair["sample_rows"].items() if k != "1"
    )
    assert all(pair["sample_columns"][k] < pair["columns"] for k in pair["sample_columns"] if k != "1")
    table = (tmp_path / "out" / "fidelities.md").read_text()
    rows = [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ")]
    starts = [r.split(" (")[0] for r in rows]
    assert starts.count("| 1/9 uniform") == 2 and starts.count("| all") == 1  # rounds 2 and the end
    # the promotion ladders replayed on those fits (the ladders with samples it has not: "-")
    replayed = bench("fidelities.py", "--replay", str(tmp_path / "out" / "fidelities.json"), cwd=tmp_path)[0]
    ladders = {line.split(" | ")[0]: line for line in replayed.splitlines()[2:]}
    assert "sooner" in ladders["| 1/9 rows, 9 rounds"] or "never" in ladders["| 1/9 rows, 9 rounds"]
    assert ladders["| 1/3 rows, 9 rounds"].count(" - ") == 2


def test_sample_efficiency(data_dir, tmp_path):
    out = tmp_path / "out"
    bench(
        "sample_efficiency.py",
        "--seeds",
        "1",
        "--trials",
        "3",
        "--rounds",
        "3",
        "--max-depth",
        "5",
        "--in-flight",
        "1,2",
        "--startup",
        "2",
        "--prune",
        "none,asha",
        "--nthread",
        "1",
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
        cwd=tmp_path,
    )
    results = json.loads((out / "results.json").read_text())
    assert results and (out / "sample_efficiency.md").stat().st_size > 0
    assert (out / "sample_efficiency.png").stat().st_size > 1000


def test_warm_start(data_dir, tmp_path):
    out = tmp_path / "out"
    bench(
        "warm_start.py",
        "--seeds",
        "1",
        "--trials",
        "3",
        "--k",
        "1",
        "--rounds",
        "3",
        "--max-depth",
        "5",
        "--nthread",
        "1",
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
        cwd=tmp_path,
    )
    results = json.loads((out / "results.json").read_text())
    assert results["rows"] and results["curves"]
    assert (out / "warm_start.md").stat().st_size > 0 and (out / "warm_start.png").stat().st_size > 1000


def test_tpe_scaling_both_measurements(prefect_api_url, tmp_path):
    tpe = bench("tpe_scaling.py", "tpe", "--sizes", "10,30", "--repeats", "1", cwd=tmp_path)
    assert len(tpe) == 3 and "machine" in tpe[0]
    orchestration = bench(
        "tpe_scaling.py",
        "orchestration",
        "--trials",
        "4",
        "--workers",
        "1",
        "--layers",
        "dask,prefect",
        cwd=tmp_path,
        env={"PREFECT_API_URL": prefect_api_url},
    )
    assert len(orchestration) == 3 and all(isinstance(o, dict) for o in orchestration[1:])


def test_soak(data_dir, prefect_api_url, tmp_path):
    out = tmp_path / "soak.json"
    bench(
        "soak.py",
        "--data-dir",
        str(data_dir),
        "--trials",
        "3",
        "--rounds",
        "2",
        "--every",
        "2",
        "--out",
        str(out),
        cwd=tmp_path,
        env={"PREFECT_API_URL": prefect_api_url},
    )
    saved = json.loads(out.read_text())
    # the trials and the linear baseline, each a FINISHED child run of the search
    assert (saved["trials_done"], saved["trials_failed"], saved["finished_child_runs"]) == (3, 0, 4)
    assert [s["trials"] for s in saved["samples"]] == [1, 2, 3]


def test_first_trial(data_dir, tmp_path, prefect_api_url):
    """One whole command (a smoke test of the script: spawned workers are test_forkserver's)."""
    printed = bench(
        "first_trial.py",
        *("--data-dir", str(data_dir), "--repeats", "1", "--workers", "1"),
        *("--worker-start", "forkserver", "--api-url", prefect_api_url),
        cwd=tmp_path,
    )
    once, *summaries = printed
    assert once["to_exit_s"] >= once["to_first_trial_s"] > 0
    assert 0 < once["outside_search_s"] < once["to_exit_s"]
    assert "prefect_api_ready" not in once["timeline"]  # the running API, no server of its own
    assert [s["worker_start"] for s in summaries] == ["forkserver"]
    assert all(s["repeats"] == 1 and s["workers"] == 1 for s in summaries)
