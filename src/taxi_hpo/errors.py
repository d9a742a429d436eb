"""One root exception; every error says what was wrong and how to fix it."""

from __future__ import annotations

import errno

#: Errors of the disk, not of the program: a full or read-only disk does not get better by
#: retrying, and the CLI says so in one line instead of a traceback.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


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
