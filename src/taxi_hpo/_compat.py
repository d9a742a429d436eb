"""Old module paths that still import: pickles and settings name our modules by string.

A registered model names ``taxi_hpo.tracking.DurationPyfunc`` and carries a pickled
``taxi_hpo.features.Preprocessor``; Prefect's cached preprocessing result is a pickled
``taxi_hpo.features.PreparedData``; a worker started by an older ``cluster/local`` script preloads
``taxi_hpo.worker_watchdog``. Each old name in :data:`MOVED` imports the module that now holds
its code, under both names, so those pickles load and those preloads run.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys

#: ``old module path -> new module path``, for every module moved since 0.1.0.
MOVED = {
    "taxi_hpo.data": "taxi_hpo.core.data",
    "taxi_hpo.features": "taxi_hpo.core.features",
    "taxi_hpo.models": "taxi_hpo.core.models",
    "taxi_hpo.dask_runner": "taxi_hpo.cluster.runner",
    "taxi_hpo.credentials": "taxi_hpo.cluster.credentials",
    "taxi_hpo.worker_data": "taxi_hpo.cluster.worker_data",
    "taxi_hpo.plugin_owner": "taxi_hpo.cluster.plugin_owner",
    "taxi_hpo.worker_watchdog": "taxi_hpo.cluster.watchdog",
    "taxi_hpo.worker_imports": "taxi_hpo.cluster.preload",
    "taxi_hpo.remote": "taxi_hpo.preflight.remote",
    "taxi_hpo.registry": "taxi_hpo.tracking.registry",
    "taxi_hpo.progress": "taxi_hpo.cli.progress",
    "taxi_hpo.bench_metrics": "taxi_hpo.bench.metrics",
    "taxi_hpo.bench_plots": "taxi_hpo.bench.plots",
    "taxi_hpo.bench_runs": "taxi_hpo.bench.runs",
    "taxi_hpo.reference_script": "taxi_hpo.bench.reference_script",
    "taxi_hpo.trials": "taxi_hpo.flows.trials",
}


class _AliasLoader(importlib.abc.Loader):
    """Loads an old name as the module now holding its code (the same module object)."""

    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return None  # a placeholder; exec_module puts the real module in its place

    def exec_module(self, module) -> None:
        # The import system reads sys.modules again after exec_module: the real module is what
        # ``import taxi_hpo.features`` returns, and its own __spec__ stays untouched.
        sys.modules[module.__name__] = importlib.import_module(self.target)


class _MovedModules(importlib.abc.MetaPathFinder):
    """Finds the old names of :data:`MOVED`."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(MOVED[fullname]))


def install() -> None:
    """Make the old names importable (once per process)."""
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModules())
