"""Shared fixtures: real data copied to a temp folder, a real Prefect API, a real MLflow store.

Environment is set before anything imports Prefect, so the whole session writes only under a
temporary folder (no ~/.prefect, no ./mlflow.db).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="taxi-hpo-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
os.environ.setdefault("TAXI_HPO_DASHBOARD", ":0")  # parallel clusters must not fight over :8787
os.environ.pop("PREFECT_API_URL", None)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TAXI_HPO_SHARED_DATA", REPO.parent / "shared" / "data"))
# Where a clone without ../shared keeps the months it fetched from the TLC (or TAXI_HPO_TLC_URL).
FETCH_CACHE = Path(
    os.environ.get("TAXI_HPO_TEST_DATA_CACHE", Path.home() / ".cache" / "taxi-hpo" / "test-data")
)
MONTHS = ("2021-01", "2021-02", "2023-01", "2023-02", "2023-03")


def _month_file(month: str) -> Path:
    return SHARED_DATA / f"green_tripdata_{month}.parquet"


def _source(month: str) -> Path:
    """The month from ../shared/data, or else fetched once into FETCH_CACHE by the project's own code."""
    if _month_file(month).is_file():
        return _month_file(month)
    from taxi_hpo.core import data
    from taxi_hpo.errors import DataError

    try:
        return data.resolve(month, FETCH_CACHE).path
    except DataError as exc:
        pytest.exit(
            f"test data: {data.month_filename(month)} is not in {SHARED_DATA} and could not be fetched "
            f"({getattr(exc.__cause__, 'reason', None) or exc.__cause__ or exc}): "
            f"set TAXI_HPO_SHARED_DATA to a folder holding the months "
            f"{', '.join(MONTHS)}",
            returncode=2,
        )


def pytest_configure(config):
    """Every month the tests read is found (or fetched) once, before any test or xdist worker
    starts: a clone with no ../shared and no network gets one line saying what to provide (a
    fixture calling ``pytest.exit`` inside an xdist worker shows as crashed workers instead)."""
    if hasattr(config, "workerinput") or config.option.help or config.option.collectonly:
        return  # an xdist worker (the controller looked already), or nothing will run
    for month in MONTHS:
        _source(month)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """A writable copy of the test months (read-only at the source)."""
    dest = _SESSION_HOME / "data"
    dest.mkdir(parents=True, exist_ok=True)
    for month in MONTHS:
        src = _source(month)
        if not (dest / src.name).exists():
            shutil.copyfile(src, dest / src.name)
            os.chmod(dest / src.name, 0o644)
    return dest


@pytest.fixture(scope="session")
def prefect_api_url():
    """One real Prefect API server for the whole session (what `taxi-hpo run` starts itself)."""
    from taxi_hpo.prefect_api import prefect_api

    with prefect_api() as url:
        yield url


@pytest.fixture(scope="session")
def prepared(data_dir):
    """The 2021-01 -> 2021-02 data every trial trains on, prepared once for the session, named by
    the files' sha256 as the flow names it (the names only key the per-process matrix cache)."""
    from taxi_hpo.core import data, features

    train, valid = (data_dir / f"green_tripdata_{m}.parquet" for m in ("2021-01", "2021-02"))
    return features.prepare_data(
        data.load(train), data.load(valid), data.file_sha256(train), data.file_sha256(valid)
    )


@pytest.fixture
def dask_processes(tmp_path, prefect_api_url):
    """A real ``dask scheduler`` and the ``dask worker`` processes a test starts (helpers.DaskProcesses)."""
    from helpers import DaskProcesses

    cluster = DaskProcesses(tmp_path, prefect_api_url)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A fresh working folder: the default sqlite store and artifacts land here."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def tracking_uri(workdir) -> str:
    return f"sqlite:///{workdir / 'mlflow.db'}"


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


#: The longest files first (their test-seconds in a CI run, 2026-12-06: 138 s down to 46 s): under
#: ``--dist loadfile`` xdist hands files out in collection order, meant to keep the suite from
#: ending with one core waiting on a long file late in the alphabet (not yet shown to shorten it:
#: that evening's runs were confounded). Every other file keeps its place.
LONGEST_FIRST = (
    "test_containers.py",  # images built from Debian's packages, then a stack up: ~3 min
    "test_flow.py",
    "test_cluster_growth.py",
    "test_faults.py",
    "test_concurrent_searches.py",
    "test_remote.py",
    "test_cli_errors.py",
    "test_bench.py",
    "test_benchmarks_smoke.py",
    "test_elastic.py",
    "test_prefect_api.py",
    "test_security.py",
    "test_serve.py",
    "test_tracking_outage.py",
    "test_transfers.py",
)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order
