"""Dask worker preload: import what a trial needs while the worker waits for its first task.

A fresh worker process spends seconds on its first trial importing Prefect's task engine,
MLflow and XGBoost. Started at worker start-up in a background thread, those imports overlap
the flow's own start (preprocessing, the baseline) instead of delaying the first trial.
"""

from __future__ import annotations

import importlib
import threading

MODULES = ("prefect.task_engine", "taxi_hpo.flows", "taxi_hpo.trials")


def _import_all() -> None:
    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the trial will import it again and report the error
            return
    from taxi_hpo.prefect_api import cache_context_hydration

    cache_context_hydration()  # ~40 ms less per trial before it starts (see there)


def dask_setup(worker=None) -> None:  # called by distributed when the worker starts
    threading.Thread(target=_import_all, name="taxi-hpo-imports", daemon=True).start()
