"""Dask worker preload: import what a trial needs while the worker waits for its first task.

A fresh worker process spends seconds on its first trial importing Prefect's task engine,
MLflow and XGBoost. Started at worker start-up in a background thread, those imports overlap
the flow's own start (preprocessing, the baseline) instead of delaying the first trial.

What to import comes from the worker's environment, ``TAXI_HPO_WARM_IMPORTS``: comma-separated
module names, or ``module:function`` to call a function once imported. The flow that starts the
cluster names them (``taxi_hpo.flows.WARM_IMPORTS``), so this adapter depends on no layer above it.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading

ENV = "TAXI_HPO_WARM_IMPORTS"


def warm_imports(spec: str) -> None:
    """Import each entry of ``spec`` in order, calling ``module:function`` entries; stop at the
    first failure (the trial imports it again and reports the error)."""
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        module, _, function = entry.partition(":")  # module_of(entry), and the function
        try:
            imported = importlib.import_module(module)
            if function:
                getattr(imported, function)()
        except Exception:  # noqa: BLE001 - see above
            return


def dask_setup(worker=None) -> None:
    """Called by distributed when the worker starts: the imports in a background thread, or, in
    a worker forked from a process that has imported them all (``cluster.forkserver``), the
    calls at once, before the worker takes a task."""
    spec = os.environ.get(ENV, "")
    if all(module_of(entry) in sys.modules for entry in spec.split(",") if entry.strip()):
        warm_imports(spec)
        return
    threading.Thread(target=warm_imports, args=(spec,), name="taxi-hpo-imports", daemon=True).start()


def module_of(entry: str) -> str:
    """The module an entry of the imports list names (``module`` or ``module:function``)."""
    return entry.strip().partition(":")[0]
