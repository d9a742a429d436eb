"""Data: months, download (from a loopback server standing in for the TLC), both layouts, errors."""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading

import pandas as pd
import pytest

from conftest import MONTHS, REPO
from taxi_hpo.core import data
from taxi_hpo.errors import DataError


@pytest.fixture
def tlc_server(data_dir, tmp_path):
    """A real HTTP server on loopback serving parquet files, in place of the TLC's address."""
    root = tmp_path / "served"
    root.mkdir()
    (root / "green_tripdata_2023-02.parquet").write_bytes(
        (data_dir / "green_tripdata_2023-02.parquet").read_bytes()
    )
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{{name}}"
    server.shutdown()


def test_month_names_and_bad_months():
    assert data.month_filename("2021-01") == "green_tripdata_2021-01.parquet"
    for bad in ("2021-13", "2021-00", "21-01", "2021/01", "jan"):
        with pytest.raises(DataError, match="YYYY-MM"):
            data.month_filename(bad)


def test_both_layouts_load_identically(data_dir, tmp_path):
    """2021 files carry string ids and a duration column; 2023 files int ids and none."""
    raw = pd.read_parquet(data_dir / "green_tripdata_2021-01.parquet")
    assert raw["PULocationID"].dtype == object or str(raw["PULocationID"].dtype).startswith("str")
    as_published = raw.drop(columns=["duration"]).copy()
    as_published["PULocationID"] = as_published["PULocationID"].astype(int)
    as_published["DOLocationID"] = as_published["DOLocationID"].astype(int)
    # A wrong precomputed duration must not matter: it is always recomputed.
    path = tmp_path / "int_ids.parquet"
    as_published.to_parquet(path)
    skewed = raw.copy()
    skewed["duration"] = -1.0
    skewed_path = tmp_path / "skewed.parquet"
    skewed.to_parquet(skewed_path)
    a = data.load(data_dir / "green_tripdata_2021-01.parquet")
    b = data.load(path)
    c = data.load(skewed_path)
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(a, c)
    assert len(a) == 73908
    assert a["duration"].between(1, 60).all()
    assert a["PULocationID"].iloc[0] == str(int(as_published["PULocationID"].iloc[0]))


def test_filter_keeps_1_to_60_minutes(data_dir):
    df = data.load(data_dir / "green_tripdata_2023-01.parquet")
    raw = pd.read_parquet(data_dir / "green_tripdata_2023-01.parquet")
    assert 0 < len(df) < len(raw)
    assert df["duration"].min() >= 1 and df["duration"].max() <= 60
    assert not df["PULocationID"].str.contains(r"\.").any()


def test_resolve_uses_cached_month_without_network(data_dir):
    month = data.resolve("2021-01", data_dir, url_template="http://127.0.0.1:9/{name}")
    assert month.path == (data_dir / "green_tripdata_2021-01.parquet").resolve()


def test_download_missing_month_atomically(tlc_server, tmp_path):
    seen = []
    month = data.resolve(
        "2023-02", tmp_path / "cache", progress=lambda d, t: seen.append((d, t)), url_template=tlc_server
    )
    assert month.path.is_file() and len(data.load(month.path)) > 0
    assert seen and seen[-1][0] == seen[-1][1] == month.path.stat().st_size
    assert [p.name for p in month.path.parent.iterdir()] == ["green_tripdata_2023-02.parquet"]


def test_failed_download_leaves_no_file(tlc_server, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        data.resolve("2020-05", cache, url_template=tlc_server)  # 404 on the server
    assert "--data-dir" in str(err.value) and "green_tripdata_2020-05.parquet" in str(err.value)
    assert list(cache.iterdir()) == []


class _Truncating(http.server.BaseHTTPRequestHandler):
    """Says the whole file's length, sends the first part of it and closes the connection (a
    dropped download); ``/garbage`` sends a complete body that is not parquet."""

    body = b""

    def do_GET(self):  # noqa: N802 - http.server's name
        full = self.body if not self.path.endswith("garbage.parquet") else b"<html>maintenance</html>"
        sent = full if self.path.endswith("garbage.parquet") else full[: len(full) // 3]
        self.send_response(200)
        self.send_header("Content-Length", str(len(full)))
        self.end_headers()
        self.wfile.write(sent)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def truncating_server(data_dir):
    handler = type(
        "Handler", (_Truncating,), {"body": (data_dir / "green_tripdata_2023-02.parquet").read_bytes()}
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_truncated_download_is_refused_and_nothing_kept(truncating_server, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        data.resolve("2023-02", cache, url_template=truncating_server + "/{name}")
    line = str(err.value)
    assert "stopped after" in line and "nothing was kept" in line and "\n" not in line
    assert list(cache.iterdir()) == []


def test_a_download_that_is_not_parquet_is_refused(truncating_server, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        data.download(truncating_server + "/garbage.parquet", cache / "green_tripdata_2023-02.parquet")
    assert "did not send a readable parquet file" in str(err.value)
    assert list(cache.iterdir()) == []


def test_offline_names_file_folder_and_flag(tmp_path):
    with pytest.raises(DataError) as err:
        data.resolve("2019-01", tmp_path, url_template="http://127.0.0.1:9/{name}")
    line = str(err.value)
    assert "green_tripdata_2019-01.parquet" in line and str(tmp_path) in line and "--data-dir" in line
    assert "\n" not in line


def test_bad_files(tmp_path, data_dir):
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match="not a readable parquet"):
        data.load(corrupt)
    missing_cols = tmp_path / "cols.parquet"
    pd.read_parquet(data_dir / "green_tripdata_2023-01.parquet").drop(columns=["trip_distance"]).to_parquet(
        missing_cols
    )
    with pytest.raises(DataError, match="lacks column.*trip_distance"):
        data.load(missing_cols)
    empty = tmp_path / "short.parquet"
    raw = pd.read_parquet(data_dir / "green_tripdata_2023-01.parquet").head(50)
    raw["lpep_dropoff_datetime"] = raw["lpep_pickup_datetime"]
    raw.to_parquet(empty)
    with pytest.raises(DataError, match="no trips of 1–60 minutes"):
        data.load(empty)
    with pytest.raises(DataError, match="does not exist"):
        data.resolve(str(tmp_path / "nope.parquet"), tmp_path)


# --- make test in a user's clone: no ../shared/data -------------------------------------------


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    fetched: list = []

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).fetched.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


def _pytest_in_a_clone(tmp_path, url: str, *flags: str) -> subprocess.CompletedProcess:
    """This repository's own tests/test_data.py::test_bad_files (it needs the months), run as in
    a clone that has no ../shared/data: TAXI_HPO_SHARED_DATA names an empty folder."""
    env = {
        **os.environ,
        "TAXI_HPO_SHARED_DATA": str(tmp_path / "no-shared"),
        "TAXI_HPO_TEST_DATA_CACHE": str(tmp_path / "cache"),
        "TAXI_HPO_TLC_URL": url,
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            *flags,
            f"{REPO}/tests/test_data.py::test_bad_files",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.integration  # a nested pytest
def test_a_clone_without_shared_data_fetches_the_months_once(data_dir, tmp_path):
    handler = type("Handler", (_CountingHandler,), {"fetched": []})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(data_dir))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{{name}}"
    try:
        first = _pytest_in_a_clone(tmp_path, url)
        assert first.returncode == 0, first.stdout[-2000:]
        assert sorted(handler.fetched) == sorted(f"/green_tripdata_{m}.parquet" for m in MONTHS)
        assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
            f"green_tripdata_{m}.parquet" for m in MONTHS
        )
        second = _pytest_in_a_clone(tmp_path, url)  # the cache serves the next run: nothing fetched
        assert second.returncode == 0, second.stdout[-2000:]
        assert len(handler.fetched) == len(MONTHS)
    finally:
        server.shutdown()


@pytest.mark.integration  # a nested pytest
def test_a_clone_that_cannot_fetch_says_how_to_provide_the_months(tmp_path):
    # in xdist workers, as `make test` runs the tests: a worker must not crash on it
    proc = _pytest_in_a_clone(tmp_path, "http://127.0.0.1:9/{name}", "-n", "2")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-2000:]
    said = [line for line in out.splitlines() if "TAXI_HPO_SHARED_DATA" in line]
    assert len(said) == 1 and "could not be fetched" in said[0] and "2021-01" in said[0]
    assert "Traceback" not in out and "ERROR at setup" not in out and "Error" not in out.replace(said[0], "")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
