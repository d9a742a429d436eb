"""Bad input: one line on stderr, exit 2, no traceback, no run left RUNNING.

Most cases call ``taxi_hpo.cli.main`` in this process (every check runs before anything starts);
a few run the real command in a fresh process, which proves that nothing a library prints on
start-up adds a line there."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from taxi_hpo import cli as taxi_cli
from taxi_hpo.tracking import store

DEAD_API = "http://127.0.0.1:9/api"  # never reached: the checks come first


@pytest.fixture(scope="module")
def bad_files(data_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    corrupt = root / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 not really parquet")
    columns = root / "columns.parquet"
    pd.read_parquet(data_dir / "green_tripdata_2023-01.parquet").drop(columns=["PULocationID"]).to_parquet(
        columns
    )
    empty = root / "empty.parquet"
    raw = pd.read_parquet(data_dir / "green_tripdata_2023-01.parquet").head(100)
    raw["lpep_dropoff_datetime"] = raw["lpep_pickup_datetime"]
    raw.to_parquet(empty)
    folder = root / "green_tripdata_2023-01.parquet"  # a folder named like a month's file
    folder.mkdir()
    typed = {}
    for name, column, cast in (
        ("text_times", "lpep_pickup_datetime", lambda c: c.astype(str)),
        ("text_distance", "trip_distance", lambda c: c.astype(str) + " mi"),
        ("fractional_ids", "PULocationID", lambda c: c + 0.5),
    ):
        frame = pd.read_parquet(data_dir / "green_tripdata_2023-01.parquet").head(500)
        frame[column] = cast(frame[column])
        typed[name] = root / f"{name}.parquet"
        frame.to_parquet(typed[name])
    return {
        "corrupt": corrupt,
        "columns": columns,
        "empty": empty,
        "missing": root / "missing.parquet",
        "folder": folder,
        **typed,
    }


def cli(workdir: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real command in a fresh process."""
    env = {**os.environ, "PREFECT_API_URL": DEAD_API}
    return subprocess.run(
        [sys.executable, "-m", "taxi_hpo.cli", "run", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def main_here(monkeypatch, capfd):
    """``taxi_hpo.cli.main(["run", ...])`` in this process, in ``workdir``: (exit code, stdout, stderr).

    capfd: what reaches file descriptors 1 and 2, not only what goes through ``sys.stderr``."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    for name in ("GIT_PYTHON_REFRESH", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"):  # main sets them
        monkeypatch.delenv(name, raising=False)

    def run(workdir: Path, *args: str) -> tuple[int, str, str]:
        monkeypatch.chdir(workdir)
        capfd.readouterr()
        with temporary_settings(updates={PREFECT_API_URL: DEAD_API}):
            try:
                code = taxi_cli.main(["run", *args])
            except SystemExit as exc:  # argparse's errors
                code = exc.code
        out, err = capfd.readouterr()
        return code, out, err

    return run


def assert_one_line(code: int, err: str, expected: str) -> str:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert expected in lines[0] and "Traceback" not in err, err
    return lines[0]


CASES = {
    "missing file": (["--train", "{missing}"], "does not exist"),
    "corrupt parquet": (["--train", "{corrupt}"], "not a readable parquet"),
    "missing columns": (["--valid", "{columns}"], "lacks column(s) PULocationID"),
    "nothing after filter": (["--train", "{empty}"], "no trips of 1–60 minutes"),
    "bad month": (["--train", "2021-13"], "is not a month"),
    "a folder as the month": (["--train", "{folder}"], "is a folder, not a file"),
    "timestamps as text": (
        ["--train", "{text_times}"],
        "lpep_pickup_datetime is large_string, not a timestamp",
    ),
    "distance as text": (["--valid", "{text_distance}"], "trip_distance is large_string, not a number"),
    "fractional location ids": (
        ["--train", "{fractional_ids}"],
        "PULocationID holds numbers that are not whole",
    ),
    "max inference time 0": (["--max-inference-time", "0"], "--max-inference-time must be a positive number"),
    "max inference time < 0": (
        ["--max-inference-time=-1e-6"],
        "--max-inference-time must be a positive number",
    ),
    "max rmse not finite": (["--max-rmse", "nan"], "--max-rmse must be a positive number"),
    "max rmse 0": (["--max-rmse", "0"], "--max-rmse must be a positive number"),
    "max rmse negative": (["--max-rmse=-1"], "--max-rmse must be a positive number"),
    "unknown tracking scheme": (["--tracking-uri", "ftp://example.org/mlflow"], "unknown scheme 'ftp'"),
    "trials <= 0": (["--trials", "0"], "--trials must be a positive"),
    "workers <= 0": (["--workers", "-1"], "--workers must be a positive"),
    "threads <= 0": (["--threads-per-worker", "0"], "--threads-per-worker must be a positive"),
    "bad timeout": (["--timeout", "soon"], "--timeout 'soon' is not a duration"),
    "kill without a budget": (["--timeout-kill"], "--timeout-kill needs --timeout"),
    "unknown pruning rule": (["--prune", "hyperband"], "invalid choice: 'hyperband'"),
    "unknown fidelity": (["--fidelity", "pixels"], "invalid choice: 'pixels'"),
    "fidelity and pruning": (["--fidelity", "auto", "--prune", "asha"], "both screen trials: give one"),
    "warm start from no search": (["--warm-start", "0123456789abcdef"], "no search run 0123456789abcdef"),
    "batch size <= 0": (["--mode", "batch", "--batch-size", "0"], "--batch-size must be a positive"),
    "unreachable scheduler": (
        ["--address", "tcp://127.0.0.1:9"],
        "Dask scheduler tcp://127.0.0.1:9 is unreachable",
    ),
    "unreachable tracking": (
        ["--tracking-uri", "http://127.0.0.1:9"],
        "tracking server http://127.0.0.1:9 is unreachable",
    ),
    "unknown resume id": (["--resume", "0123456789abcdef"], "no search run 0123456789abcdef"),
    "max depth below bound": (["--max-depth", "3"], "below the space's lower bound 4"),
    "not a number": (["--trials", "many"], "invalid int value"),
    "unknown cluster class": (["--cluster-class", "nosuch_pkg.Cluster"], "cannot import nosuch_pkg"),
    "not a cluster class": (
        ["--cluster-class", "distributed.NoSuchCluster"],
        "has no cluster class 'NoSuchCluster'",
    ),
    "cluster kwargs without a class": (
        ["--cluster-kwargs", "{{}}"],
        "--cluster-kwargs needs --cluster-class",
    ),
    "cluster kwargs not a mapping": (
        ["--cluster-class", "distributed.LocalCluster", "--cluster-kwargs", "[1, 2]"],
        "must be a mapping",
    ),
    "cluster kwargs not JSON": (
        ["--cluster-class", "distributed.LocalCluster", "--cluster-kwargs", "{{n_workers"],
        "is not valid JSON/YAML",
    ),
    "adapt without a class": (["--adapt", "1:3"], "--adapt needs --cluster-class"),
    "adapt backwards": (["--cluster-class", "distributed.LocalCluster", "--adapt", "3:1"], "0 <= MIN <= MAX"),
    "adapt not a range": (
        ["--cluster-class", "distributed.LocalCluster", "--adapt", "three"],
        "give MIN:MAX",
    ),
    "address and cluster class": (
        ["--address", "tcp://127.0.0.1:9", "--cluster-class", "distributed.LocalCluster"],
        "give one of them",
    ),
}


#: Run as the real command in a fresh process: a flag argparse rejects, a file that is not
#: there, a tracking server that refuses the connection.
IN_A_FRESH_PROCESS = ("not a number", "missing file", "unreachable tracking")


def _args(case: str, bad_files: dict[str, Path]) -> tuple[list[str], str]:
    args, expected = CASES[case]
    return [a.format(**{k: str(v) for k, v in bad_files.items()}) for a in args], expected


#: In this process, but against real services: a Dask comm that waits out its connect timeout, a
#: sqlite MLflow store created (and migrated) to be read.
AGAINST_SERVICES = ("unreachable scheduler", "unknown resume id", "warm start from no search")


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, marks=[pytest.mark.integration] if c in AGAINST_SERVICES else [])
        for c in CASES
        if c not in IN_A_FRESH_PROCESS
    ],
)
def test_bad_input_is_one_line_and_exit_2(case, bad_files, data_dir, tmp_path, main_here):
    args, expected = _args(case, bad_files)
    code, out, err = main_here(tmp_path, "--data-dir", str(data_dir), *args)
    assert_one_line(code, err, expected)
    assert out == ""
    assert_nothing_created(tmp_path)


@pytest.mark.integration
@pytest.mark.parametrize("case", IN_A_FRESH_PROCESS)
def test_bad_input_is_one_line_and_exit_2_in_a_fresh_process(case, bad_files, data_dir, tmp_path):
    args, expected = _args(case, bad_files)
    proc = cli(tmp_path, "--data-dir", str(data_dir), *args)
    assert_one_line(proc.returncode, proc.stderr, expected)
    assert proc.stdout == ""
    assert_nothing_created(tmp_path)


def assert_nothing_created(workdir: Path) -> None:
    """What the README promises of bad input: no run, no artifact. Only a check that reads the
    store (an unknown --resume or --warm-start id) may have made an empty sqlite store."""
    made = sorted(p.name for p in workdir.iterdir())
    assert made in ([], ["mlflow.db"]), made
    if made:
        with sqlite3.connect(workdir / "mlflow.db") as conn:
            assert conn.execute("select count(*) from runs").fetchone()[0] == 0


# --- the disk: a read-only data folder, a full artifact folder (real tmpfs mounts) --------------


@pytest.fixture
def tmpfs(tmp_path):
    """Mount small tmpfs folders (root only: elsewhere the test skips with one line)."""
    mounted = []

    def mount(name: str, *options: str) -> Path:
        where = tmp_path / name
        where.mkdir()
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}): needs root")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_read_only_data_folder_when_a_month_must_be_downloaded(tmpfs, tmp_path, main_here):
    read_only = tmpfs("data", "ro", "size=1m")
    code, _, err = main_here(tmp_path, "--data-dir", str(read_only), "--train", "2019-01")
    line = assert_one_line(code, err, "must be downloaded, but that folder cannot be written")
    assert "--data-dir" in line and "green_tripdata_2019-01.parquet" in line and str(read_only) in line, line
    assert [p.name for p in tmp_path.iterdir() if p != read_only] == []


def _search(cwd: Path, api_url: str | None, *args: str) -> subprocess.CompletedProcess:
    """A small real search (``taxi-hpo run``) in a fresh process, on the session's Prefect API
    (``api_url``) or on a temporary one of its own (None)."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "taxi_hpo.cli",
            "run",
            "--trials",
            "2",
            "--rounds",
            "3",
            "--max-depth",
            "5",
            "--no-report",
            *args,
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.integration
def test_a_full_disk_under_the_store_and_artifacts(tmpfs, data_dir, prefect_api_url):
    # The sqlite store and 160 KiB fit, the preprocessor artifact (~300 KB) does not. A fixed 1 MiB
    # left 16 KiB beside MLflow 3.18's empty store: the Default experiment's insert filled it (CI
    # 2026-12-07), so the room is sized from the store this MLflow makes.
    room = store._empty_store_template().stat().st_size + 160 * 1024
    full = tmpfs("work", f"size={room}")
    # The flow fails before the first trial and the local cluster closes at once: a closing worker's
    # in-flight heartbeat logged a traceback here on busy cores (cluster.watchdog; CI 2026-12-04).
    proc = _search(full, prefect_api_url, "--data-dir", str(data_dir))
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr and lines, proc.stderr[-3000:]
    assert "No space left on device" in lines[-1] and "--resume" in lines[-1], lines[-1]
    assert not [line for line in lines[:-1] if "rror" in line], lines
    with sqlite3.connect(full / "mlflow.db") as conn:
        statuses = [s for (s,) in conn.execute("select status from runs")]
    assert statuses and set(statuses) == {"FAILED"}, statuses  # the runs this search opened end FAILED


@pytest.mark.integration
@pytest.mark.parametrize("extra", [None, 8 * 1024], ids=["copy-fails", "first-insert-fails"])
def test_a_disk_too_full_for_the_store_itself(tmpfs, data_dir, prefect_api_url, extra):
    # None: 256 KiB, less than MLflow's empty store (~1 MB), whose copy fails; 8 KiB beside it: the
    # copy fits and MLflow's insert of the Default experiment fails ("database or disk is full").
    room = 256 * 1024 if extra is None else store._empty_store_template().stat().st_size + extra
    full = tmpfs("work", f"size={room}")
    proc = _search(full, prefect_api_url, "--data-dir", str(data_dir))
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-3000:]
    assert "cannot be written (No space left on device)" in lines[0], lines[0]
    assert "--tracking-uri" in lines[0] and "no run was started" in lines[0], lines[0]
    assert not [p.name for p in full.iterdir() if "mlflow.db" in p.name]  # no store half-made, no seed copy


# --- --resume of what is not a search to go on with ---------------------------------------------


@pytest.fixture(scope="module")
def finished_search(data_dir, tmp_path_factory, prefect_api_url) -> dict:
    work = tmp_path_factory.mktemp("finished")
    proc = _search(work, prefect_api_url, "--data-dir", str(data_dir), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    with sqlite3.connect(work / "mlflow.db") as conn:
        trial = conn.execute("select run_uuid from runs where name = 'trial-0000'").fetchone()[0]
    return {"work": work, "parent": summary["parent_run_id"], "trial": trial}


def _runs(work: Path) -> list[tuple]:
    with sqlite3.connect(work / "mlflow.db") as conn:
        return sorted(conn.execute("select run_uuid, status, end_time from runs").fetchall())


@pytest.mark.integration
def test_resume_of_a_trial_run_is_refused(finished_search, data_dir, main_here):
    before = _runs(finished_search["work"])
    code, _, err = main_here(
        finished_search["work"], "--data-dir", str(data_dir), "--resume", finished_search["trial"]
    )
    line = assert_one_line(code, err, "is not a taxi-hpo search")
    assert "parent run id" in line
    assert _runs(finished_search["work"]) == before


@pytest.mark.integration
def test_resume_of_a_complete_search_runs_nothing(finished_search, data_dir, main_here):
    before = _runs(finished_search["work"])
    code, out, err = main_here(
        finished_search["work"], "--data-dir", str(data_dir), "--resume", finished_search["parent"], "--json"
    )
    assert code == 0, err
    said = json.loads(out)
    assert said["already_complete"] is True and said["trials_done"] == 2
    assert said["parent_run_id"] == finished_search["parent"]
    assert "is already complete (2 of 2 trials ended" in err and "nothing to run" in err
    assert _runs(finished_search["work"]) == before  # no run added, none reopened or re-ended


def test_help_and_version_say_what_the_command_is_and_exit_0(capsys):
    """`taxi-hpo --version` names the installed version; `--help` lists the commands and `run
    --help` the search's flags, --fidelity among them; each exits 0."""
    import taxi_hpo
    from taxi_hpo import cli

    for argv, expected in (
        (["--version"], [f"taxi-hpo {taxi_hpo.__version__}"]),
        (["--help"], ["run", "bench", "plan", "report", "serve"]),
        (["run", "--help"], ["--trials", "--fidelity", "--prune", "--resume", "--warm-start"]),
    ):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        out = capsys.readouterr().out
        assert exit_.value.code == 0 and all(word in out for word in expected), (argv, out[:500])
