"""taxi-hpo: a parallel hyperopt TPE search of the NYC-taxi XGBoost pipeline on Dask."""

from taxi_hpo import _compat

__version__ = "0.1.0"

_compat.install()
