"""The pure core: months to data, the features, the models and the machine's cores.

Nothing here imports Prefect, Dask or MLflow (checked by the import contracts in pyproject.toml).
"""
