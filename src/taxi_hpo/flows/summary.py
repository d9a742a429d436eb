"""A finished search as one value, and the summary (``--json``, the CLI's lines) made from it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from taxi_hpo import timeline, tracking
from taxi_hpo.config import RunConfig
from taxi_hpo.search import TrialOutcome
from taxi_hpo.search.promotion import ladder_counts


@dataclass(frozen=True)
class TrialsRun:
    """What the trials of a search did: outcomes in the scheduler's order, and the cluster's side."""

    outcomes: list[TrialOutcome]
    search_started: float
    search_wall_s: float
    slots: int
    #: slot-seconds the cluster offered (its slots may change while workers join and leave)
    slot_seconds: float = 0.0
    #: ``[(time, slots)]``: each change of the slots the search saw
    slots_seen: list = field(default_factory=list)
    #: the largest pickled trial submission (bytes)
    submit_bytes_max: int = 0

    def mark_timeline(self) -> None:
        """The first trial's start and the last trial's end on the command's timeline."""
        starts = [o.started for o in self.outcomes if o.started]
        ends = [o.finished for o in self.outcomes if o.finished]
        if starts:
            timeline.mark("first_trial_started", min(starts))
        if ends:
            timeline.mark("last_trial_ended", max(ends))

    @property
    def utilisation(self) -> float | None:
        """Busy slot-seconds over the slot-seconds the cluster offered."""
        if self.search_wall_s <= 0:
            return None
        busy = sum(o.busy_s for o in self.outcomes)
        return round(busy / (self.slot_seconds or self.slots * self.search_wall_s), 4)


@dataclass(frozen=True)
class SearchResult:
    """A finished search: its settings, where it is logged, its trials, and what it registered."""

    cfg: RunConfig
    ctx: tracking.TrackingContext
    trials: TrialsRun
    lr_rmse: float
    wall_s: float
    registered_version: str | None
    preprocess_cached: bool
    data_bytes: int
    dashboard: str | None
    warm_start: list[str] = field(default_factory=list)

    @classmethod
    def collect(
        cls,
        cfg: RunConfig,
        ctx: tracking.TrackingContext,
        trials: TrialsRun,
        lr_rmse: float,
        started: float,
        registered_version: str | None,
        months: dict,
        client,
        history,
    ) -> SearchResult:
        """The result of a search that started at ``started`` and ends now: ``months`` is what the
        ``preprocess`` flow returned, ``client`` the Dask client, ``history`` its starting point."""
        return cls(
            cfg,
            ctx,
            trials,
            lr_rmse,
            time.time() - started,
            registered_version,
            months["cached"],
            months["data"].nbytes,
            client.dashboard_link,
            [w["from"] for w in history.warm],
        )

    @property
    def complete(self) -> list[TrialOutcome]:
        """Trials that trained to the end (a pruned trial's RMSE is of an unfinished model)."""
        return [o for o in self.trials.outcomes if o.complete]

    @property
    def best(self) -> TrialOutcome | None:
        """The complete trial with the lowest RMSE, or None when no trial completed."""
        return min(self.complete, key=lambda o: o.loss) if self.complete else None

    @property
    def ended_on_timeout(self) -> bool:
        """The budget ran out before the search's trials: ``--resume`` runs the rest."""
        outcomes = self.trials.outcomes
        cancelled = sum(o.cancelled for o in outcomes)
        return self.cfg.timeout_s is not None and len(outcomes) - cancelled < self.cfg.trials

    def parent_metrics(self) -> dict:
        """The metrics the parent run ends with."""
        values = {
            "best_rmse": self.best.loss if self.best else None,
            "lr_rmse": round(self.lr_rmse, 4),
            "utilisation": self.trials.utilisation,
            "search_wall_s": round(self.trials.search_wall_s, 3),
        }
        return {k: v for k, v in values.items() if v is not None}

    def to_dict(self) -> dict:
        """The summary ``taxi-hpo run --json`` prints (plain data)."""
        cfg, ctx, run, best = self.cfg, self.ctx, self.trials, self.best
        outcomes = run.outcomes
        ok = [o for o in outcomes if o.ok]
        cancelled = [o for o in outcomes if o.cancelled]
        return {
            "parent_run_id": ctx.parent_run_id,
            "experiment_id": ctx.experiment_id,
            "tracking_uri": ctx.tracking_uri,
            "mlflow_ui": tracking.ui_link(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id),
            "lr_rmse": round(self.lr_rmse, 4),
            "best_rmse": best.loss if best else None,
            "best_params": best.params if best else None,
            "best_run_id": best.run_id if best else None,
            "trials_done": len(ok),
            "trials_failed": len(outcomes) - len(ok) - len(cancelled),
            "trials_pruned": sum(o.pruned_at is not None for o in ok),
            "trials_complete": len(self.complete),
            "trials_cancelled": len(cancelled),
            "trials_not_started": cfg.trials - len(outcomes),
            "ended_on_timeout": self.ended_on_timeout,
            "prune": cfg.prune,
            "fidelity": cfg.fidelity,
            "ladder": ladder_counts(o.fidelity for o in outcomes) if cfg.fidelity != "none" else None,
            "trial_params": [o.params for o in outcomes],
            "trials": [_timing(o) for o in outcomes],
            "trial_rmse": [o.loss for o in outcomes],
            "mode": cfg.mode,
            "slots": run.slots,
            "wall_s": round(self.wall_s, 3),
            "search_wall_s": round(run.search_wall_s, 3),
            "utilisation": run.utilisation,
            "preprocessor_artifacts": tracking.count_preprocessor_artifacts(
                ctx.tracking_uri, ctx.parent_run_id
            ),
            "preprocess_cached": self.preprocess_cached,
            "registered_version": self.registered_version,
            "dashboard": self.dashboard,
            "slots_seen": [[round(t - run.search_started, 3), n] for t, n in run.slots_seen],
            "search_started": run.search_started,
            "warm_start": list(self.warm_start),
            "submit_bytes_max": run.submit_bytes_max,
            "data_bytes": self.data_bytes,
            # seconds since the process started (the CLI adds the steps after the flow)
            "timeline": timeline.timeline(),
        }


def trial_fidelity(o: TrialOutcome) -> dict:
    """What a trial fitted (``--json``'s ``fidelity``): a multi-fidelity search's rung, else the
    one complete rung (all rows, the search's rounds)."""
    if o.fidelity:
        return dict(o.fidelity)
    return {"rung": 0, "of": 1, "rows": 1.0, "rounds": None, "config": o.trial_id, "promoted_from": None}


def _timing(o: TrialOutcome) -> dict:
    return {
        "trial_id": o.trial_id,
        "loss": o.loss,
        "started": o.started,
        "finished": o.finished,
        "fit_s": o.fit_s,
        "worker": o.worker,
        "run_id": o.run_id,
        "error": o.error,
        "pruned_at": o.pruned_at,
        "fidelity": trial_fidelity(o),
        "complete": o.complete,
        "matrix_builds": o.metrics.get("worker_matrix_builds"),
        **{k: o.metrics.get(k) for k in ("train_s", "train_cpu_s", "threads_mean")},
    }
