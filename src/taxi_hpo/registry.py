"""Choosing the trial to register: the best one that meets the thresholds (no mlflow import)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from taxi_hpo import tracking
from taxi_hpo.core.features import Preprocessor
from taxi_hpo.search.scheduler import TrialOutcome
from taxi_hpo.trials import BOOSTER_DIR, BOOSTER_FILE


def qualifying(outcomes: list[TrialOutcome], max_rmse: float, max_inference_time: float) -> list[TrialOutcome]:
    """Finished trials under both thresholds, best first; a pruned trial never qualifies."""
    ok = [o for o in outcomes if o.complete and o.run_id and o.loss < max_rmse
          and o.metrics.get("inference_time", float("inf")) < max_inference_time]
    return sorted(ok, key=lambda o: o.loss)


def requirements() -> list[str]:
    """Pinned requirements of the bundled model: no dependency inference (5–8 s a call)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for dist, name in (("xgboost", "xgboost"), ("xgboost-cpu", "xgboost"), ("scikit-learn", "scikit-learn"),
                       ("pandas", "pandas"), ("scipy", "scipy"), ("numpy", "numpy")):
        try:
            pins.append(f"{name}=={version(dist)}")
        except PackageNotFoundError:
            continue
    seen, unique = set(), []
    for pin in pins:
        name = pin.split("==")[0]
        if name not in seen:
            seen.add(name)
            unique.append(pin)
    return unique


def register_best(outcomes: list[TrialOutcome], preprocessor: Preprocessor, ctx: tracking.TrackingContext,
                  max_rmse: float, max_inference_time: float) -> str | None:
    """Register the best qualifying trial as ``nyc-taxi-duration@staging``; None when none qualifies."""
    candidates = qualifying(outcomes, max_rmse, max_inference_time)
    if not candidates:
        return None
    best = candidates[0]
    with tempfile.TemporaryDirectory() as tmp:
        booster = tracking.download_artifact(ctx, best.run_id, f"{BOOSTER_DIR}/{BOOSTER_FILE}", Path(tmp))
        return tracking.register_model(ctx, best.run_id, preprocessor.to_bytes(), booster, requirements())
