"""What a search starts from: nothing, an interrupted search it finishes (``--resume``), or the
best points of an earlier one (``--warm-start``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from prefect import get_run_logger

from taxi_hpo import tracking
from taxi_hpo.config import RunConfig
from taxi_hpo.search import TrialOutcome
from taxi_hpo.search.space import MIN_MAX_DEPTH, decode_logged


@dataclass(frozen=True)
class History:
    """A search's starting point.

    ``record``: the search being resumed (None for a new one); ``known``: its trials that ended,
    as outcomes the scheduler replays; ``warm``: the points evaluated first,
    ``[{"from": "PARENT:TRIAL", "params": point}]`` (a resumed search keeps its own).
    """

    record: tracking.SearchRecord | None = None
    known: dict[int, TrialOutcome] = field(default_factory=dict)
    warm: list[dict] = field(default_factory=list)

    @property
    def lr_rmse(self) -> float | None:
        """The baseline's RMSE if the resumed search already has it."""
        return self.record.lr_rmse if self.record else None

    def in_flight(self, cfg: RunConfig, slots: int) -> int:
        """Trials at once: every slot in async mode; the batch size in batch mode, the resumed
        search's own (or the replay would diverge)."""
        if cfg.mode == "async":
            return slots
        if self.record is not None and "in_flight" in self.record.params:
            return int(self.record.params["in_flight"])
        return cfg.batch_size or slots


def load_history(cfg: RunConfig, tracking_uri: str, experiment_id: str) -> History:
    """The history ``cfg`` asks for (``resume``, ``warm_start``), read from the store."""
    if cfg.resume:
        record = tracking.load_search(tracking_uri, cfg.resume)
        return History(record, known_outcomes(record), json.loads(record.tags.get(tracking.WARM_TAG) or "[]"))
    return History(warm=warm_points(cfg, tracking_uri, experiment_id))


def known_outcomes(record: tracking.SearchRecord) -> dict[int, TrialOutcome]:
    """The trials of ``record`` that ended (finished, or failed for good), by trial id."""
    known = {
        tid: TrialOutcome(
            tid,
            decode_logged(t["params"]),
            t["loss"],
            run_id=t["run_id"],
            metrics=t["metrics"],
            curve=t.get("curve") or {},
            pruned_at=t.get("pruned_at"),
            fidelity=t.get("fidelity") or {},
        )
        for tid, t in record.trials.items()
    }
    for tid, failure in record.failed.items():
        known[tid] = TrialOutcome(tid, failure["params"], None, error=failure["error"])
    return known


def warm_points(cfg: RunConfig, tracking_uri: str, experiment_id: str) -> list[dict]:
    """``--warm-start``: the best points of an earlier search, as this search's first trials;
    ``max_depth`` kept inside this search's space."""
    if not cfg.warm_start:
        return []
    source = (
        tracking.latest_search(tracking_uri, experiment_id) if cfg.warm_start == "latest" else cfg.warm_start
    )
    if source is None:
        get_run_logger().warning("--warm-start latest: no earlier search in this experiment; starting cold")
        return []
    warm = []
    for best in tracking.best_points(tracking_uri, source, cfg.warm_start_trials):
        point = decode_logged(best["params"])
        point["max_depth"] = min(max(int(point["max_depth"]), MIN_MAX_DEPTH), cfg.max_depth)
        warm.append({"from": best["from"], "params": point})
    return warm
