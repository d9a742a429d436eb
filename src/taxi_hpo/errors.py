"""One root exception; every error says what was wrong and how to fix it."""

from __future__ import annotations

import errno
import os
import sqlite3

#: Errors of the disk, not of the program: a full or read-only disk does not get better by
#: retrying, and the CLI says so in one line instead of a traceback.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
#: How sqlite says a full disk (an ``OperationalError``, not an OSError).
SQLITE_FULL = "database or disk is full"


def disk_error(exc: BaseException | None) -> OSError | None:
    """The full/read-only-disk error behind ``exc`` (MLflow, SQLAlchemy and Prefect wrap it), or
    None. sqlite says a full disk as ``OperationalError("database or disk is full")``, not as an
    OSError; it is returned as the ENOSPC it is."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            return exc
        if isinstance(exc, sqlite3.OperationalError) and SQLITE_FULL in str(exc):
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        exc = exc.__cause__ or exc.__context__
    return None


class TaxiHpoError(Exception):
    """Root of every error the user can cause; the CLI prints it as one line and exits 2."""


class ConfigError(TaxiHpoError):
    """A flag or setting is out of range or inconsistent."""


class DataError(TaxiHpoError):
    """A month cannot be found, downloaded, read or has no usable rows."""


class ClusterError(TaxiHpoError):
    """The Dask scheduler cannot be reached or its workers cannot run the search."""


class TrackingError(TaxiHpoError):
    """The MLflow tracking store cannot be reached or holds something unexpected."""


class PrefectApiError(TaxiHpoError):
    """The Prefect API this run needs cannot be started or reached."""
