"""Months to files (cache, download), loading, target and the 1–60 minute filter.

Both TLC layouts load identically: integer or string location ids, with or without a
precomputed ``duration`` column (it is always recomputed from the two timestamps).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from taxi_hpo.errors import DataError

if TYPE_CHECKING:  # imported where used: the command checks its inputs before loading them
    import pandas as pd
    import pyarrow as pa

TLC_URL = "https://d37ci6vzurychx.cloudfront.net/trip-data/{name}"
#: A mirror of the TLC's trip-data folder (``https://host/path/{name}``) replaces TLC_URL.
TLC_URL_ENV = "TAXI_HPO_TLC_URL"
MONTH_RE = re.compile(r"^(\d{4})-(\d{2})$")
PICKUP, DROPOFF = "lpep_pickup_datetime", "lpep_dropoff_datetime"
REQUIRED_COLUMNS = (PICKUP, DROPOFF, "PULocationID", "DOLocationID", "trip_distance")
MIN_MINUTES, MAX_MINUTES = 1.0, 60.0

#: Called as ``progress(bytes_done, bytes_total_or_None)`` while a month downloads.
ProgressFn = Callable[[int, "int | None"], None]


@dataclass(frozen=True)
class MonthFile:
    """A resolved input: where it lives and what it was asked as."""

    spec: str
    path: Path


def is_month(spec: str) -> bool:
    """True when ``spec`` looks like ``YYYY-MM`` (it may still be an invalid month)."""
    return MONTH_RE.match(spec) is not None


def month_filename(month: str) -> str:
    """``2021-01`` -> ``green_tripdata_2021-01.parquet``; rejects anything but a real month."""
    match = MONTH_RE.match(month)
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise DataError(
            f"'{month}' is not a month: give YYYY-MM (e.g. 2021-01) or the path of a parquet file"
        )
    return f"green_tripdata_{month}.parquet"


def tlc_url() -> str:
    """Where months come from: ``$TAXI_HPO_TLC_URL`` (a mirror, ``{name}`` for the file name) or the TLC."""
    url = os.environ.get(TLC_URL_ENV) or TLC_URL
    if "{name}" not in url:
        raise DataError(
            f"{TLC_URL_ENV}={url} has no {{name}}: give the mirror's address with {{name}} where "
            f"the file name goes, e.g. https://mirror/trip-data/{{name}}"
        )
    return url


def locate(spec: str, data_dir: Path) -> MonthFile:
    """Where ``--train``/``--valid`` lives, read from the names alone (nothing downloaded, nothing
    read): an existing parquet file, or a month's file in ``data_dir`` that may still have to be
    downloaded. DataError for what cannot be one (a missing path, a folder, no such month)."""
    looks_like_path = spec.endswith(".parquet") or os.sep in spec
    if looks_like_path:
        path = Path(spec).expanduser()
        if path.is_dir():
            raise DataError(
                f"{path} is a folder, not a file: pass a parquet file of one month or a month YYYY-MM "
                f"(--data-dir takes the folder)"
            )
        if not path.is_file():
            raise DataError(f"{path} does not exist: pass an existing parquet file or a month YYYY-MM")
        return MonthFile(spec, path.resolve())
    path = Path(data_dir).expanduser().resolve() / month_filename(spec)
    if path.is_dir():
        raise DataError(f"{path} is a folder, not the month's file: remove it or pass another --data-dir")
    return MonthFile(spec, path)


def resolve(
    spec: str, data_dir: Path, progress: ProgressFn | None = None, url_template: str | None = None
) -> MonthFile:
    """Turn ``--train``/``--valid`` into an existing local file, downloading a month if needed."""
    month = locate(spec, data_dir)
    if not month.path.is_file():
        download((url_template or tlc_url()).format(name=month.path.name), month.path, progress)
    return month


def download(url: str, dest: Path, progress: ProgressFn | None = None, timeout: float = 30.0) -> None:
    """Fetch ``url`` into ``dest`` atomically: a failed download leaves no file behind."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as exc:
        raise DataError(
            f"{dest.name} is not in {dest.parent} and must be downloaded, but that folder cannot be "
            f"written ({exc.strerror or exc}): pass --data-dir with a writable folder, or one that "
            f"holds the file"
        ) from exc
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            total = resp.headers.get("Content-Length")
            total = int(total) if total else None
            done = 0
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
        # A server that closes early ends read() with b"" as a finished body would: count.
        if total is not None and done != total:
            raise DataError(
                f"the download of {dest.name} from {url} stopped after {done:,} of {total:,} bytes: "
                f"nothing was kept; run again, or put the file in {dest.parent}"
            )
        try:
            pq.read_metadata(tmp)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(
                f"{url} did not send a readable parquet file ({done:,} bytes; {exc}): nothing was "
                f"kept; run again, or put the file in {dest.parent}"
            ) from None
        os.replace(tmp, dest)
    except DataError:
        Path(tmp).unlink(missing_ok=True)
        raise
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        Path(tmp).unlink(missing_ok=True)
        raise DataError(
            f"{dest.name} is not in {dest.parent} and could not be downloaded ({_reason(exc)}): "
            f"put the file there or pass --data-dir with a folder that holds it"
        ) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    return str(reason)


def file_sha256(path: Path) -> str:
    """Content hash of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def load(path: Path) -> pd.DataFrame:
    """Read one month, recompute ``duration`` in minutes, keep 1–60 minutes, ids as strings."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(
            f"{path} is not a readable parquet file ({exc}): re-download it or pass another file"
        ) from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if missing:
        raise DataError(
            f"{path} lacks column(s) {', '.join(missing)}: expected a TLC green-taxi trip file "
            f"with {', '.join(REQUIRED_COLUMNS)}"
        )
    wrong = column_type_errors(schema)
    if wrong:
        raise DataError(
            f"{path} has columns of the wrong type ({'; '.join(wrong)}): expected a TLC green-taxi "
            f"trip file as published"
        )
    try:
        df = pd.read_parquet(path, columns=list(REQUIRED_COLUMNS))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataError(f"{path} could not be read ({exc}): re-download it or pass another file") from exc
    try:
        df = prepare(df)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from exc
    if df.empty:
        raise DataError(
            f"{path} has no trips of {MIN_MINUTES:g}–{MAX_MINUTES:g} minutes after filtering: "
            f"check that it is a trip-record month"
        )
    return df


def column_type_errors(schema: pa.Schema) -> list[str]:
    """What is wrong with the types of the required columns (both TLC layouts pass):
    timestamps for pickup and dropoff, a number for ``trip_distance``, integer (or integral
    float) or string location ids."""
    import pyarrow as pa

    def kind(name: str) -> pa.DataType:
        t = schema.field(name).type
        return t.value_type if pa.types.is_dictionary(t) else t

    wrong = [
        f"{c} is {kind(c)}, not a timestamp"
        for c in (PICKUP, DROPOFF)
        if not (pa.types.is_timestamp(kind(c)) or pa.types.is_date(kind(c)))
    ]
    t = kind("trip_distance")
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)):
        wrong.append(f"trip_distance is {t}, not a number")
    for c in ("PULocationID", "DOLocationID"):
        t = kind(c)
        if not (
            pa.types.is_integer(t)
            or pa.types.is_floating(t)
            or pa.types.is_string(t)
            or pa.types.is_large_string(t)
        ):
            wrong.append(f"{c} is {t}, not an id")
    return wrong


def prepare(df: pd.DataFrame) -> pd.DataFrame:
    """The reference transform on raw rows: target, filter, string ids (pure)."""
    import pandas as pd

    try:
        pickup = pd.to_datetime(df[PICKUP])
        dropoff = pd.to_datetime(df[DROPOFF])
    except (ValueError, TypeError) as exc:
        raise DataError(f"pickup/dropoff columns are not timestamps ({exc})") from exc
    out = pd.DataFrame(
        {
            "PULocationID": location_ids(df["PULocationID"]),
            "DOLocationID": location_ids(df["DOLocationID"]),
            "trip_distance": pd.to_numeric(df["trip_distance"], errors="coerce").astype("float64"),
            "duration": (dropoff - pickup).dt.total_seconds() / 60.0,
        }
    )
    keep = (out["duration"] >= MIN_MINUTES) & (out["duration"] <= MAX_MINUTES)
    return out.loc[keep].reset_index(drop=True)


def location_ids(col: pd.Series) -> pd.Series:
    """Location ids as strings, whether stored as int, float or string ('130', not '130.0')."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(col):
        try:
            return col.astype("Int64").astype(str)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{col.name} holds numbers that are not whole location ids ({exc})") from exc
    return col.astype(str)
