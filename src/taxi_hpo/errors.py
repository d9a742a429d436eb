"""One root exception; every error says what was wrong and how to fix it."""

from __future__ import annotations


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
