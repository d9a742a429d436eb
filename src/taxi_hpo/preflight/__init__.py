"""Checks made before anything is started, so bad input costs one line and no half-made runs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from taxi_hpo import tracking
from taxi_hpo.config import RunConfig
from taxi_hpo.core import data

#: How a search ends (registration thresholds and switches, the report): RunConfig field -> how
#: its parent-run parameter reads back.
OUTCOME = {
    "max_rmse": float,
    "max_inference_time": float,
    "register": lambda text: text == "True",
    "report": lambda text: text == "True",
}


def resume_config(
    cfg: RunConfig,
    record: tracking.SearchRecord,
    data_dir_given: bool = False,
    given: frozenset[str] = frozenset(),
) -> RunConfig:
    """For ``--resume``: the search-defining settings come from the parent run (``record``,
    from :func:`tracking.load_search`), not the flags.

    The data folder too, unless ``--data-dir`` was given explicitly; and how the search ends
    (:data:`OUTCOME`), unless its flag is in ``given`` (RunConfig field names) or the search did
    not record it (a search of taxi-hpo 0.1: the flags, or their defaults).
    """
    p = record.params
    batch = p.get("mode") == "batch"
    data_dir = cfg.data_dir if data_dir_given or not p.get("data_dir") else p["data_dir"]
    kept = {field: read(p[field]) for field, read in OUTCOME.items() if field not in given and field in p}
    return replace(
        cfg,
        **kept,
        data_dir=data_dir,
        train=p["train"],
        valid=p["valid"],
        mode=p["mode"],
        trials=int(p["trials"]),
        seed=int(p["seed"]),
        rounds=int(p["rounds"]),
        max_depth=int(p["max_depth"]),
        prune=p.get("prune", "none"),
        fidelity=p.get("fidelity", "none"),
        fidelity_model=p.get("fidelity_model", "lowest"),  # a ladder search that did not record it
        batch_size=int(p["in_flight"]) if batch and p.get("in_flight") else cfg.batch_size,
        experiment=tracking.experiment_name(cfg.resolved_tracking_uri, record.experiment_id),
    )


def resume_line(cfg: RunConfig, record: tracking.SearchRecord, given: frozenset[str] = frozenset()) -> str:
    """The first line ``--resume`` prints: the search it goes on with and how it will end, each
    setting said to be the search's own, given now, or a default."""

    def source(field: str) -> str:
        if field in given:
            return "given now"
        return "the search's own" if field in record.params else "default: the search did not record it"

    ended = len(_ended(record))
    if cfg.register:
        register = (
            f"registering below RMSE {cfg.max_rmse:g} ({source('max_rmse')}) and "
            f"{cfg.max_inference_time:g} s a row ({source('max_inference_time')})"
        )
    else:
        register = f"not registering ({source('register')})"
    report = f"report {'on' if cfg.report else 'off'} ({source('report')})"
    return (
        f"taxi-hpo: resuming search {record.run_id} ({ended} of {cfg.trials} trials ended): "
        f"{register}, {report}"
    )


def complete_search(cfg: RunConfig, record: tracking.SearchRecord) -> dict | None:
    """For ``--resume`` of a search (``record``) whose every trial has ended (finished, pruned or
    failed for good) and whose parent run is closed: what to say instead of running anything;
    else None. A search that stopped on its time budget has trials left: it is not complete."""
    ended = _ended(record)
    if record.status != "FINISHED" or not set(range(cfg.trials)) <= ended:
        return None
    losses = [t["loss"] for t in record.trials.values() if tracking.is_complete(t)]
    return {
        "parent_run_id": record.run_id,
        "already_complete": True,
        "trials": cfg.trials,
        "trials_done": len(record.trials),
        "trials_failed": len(record.failed),
        "best_rmse": min(losses) if losses else None,
        "tracking_uri": cfg.resolved_tracking_uri,
    }


def check(cfg: RunConfig, progress: data.ProgressFn | None = None) -> None:
    """Resolve (download, reporting to ``progress``) and load both months, reach the store and
    the scheduler."""
    for spec in (cfg.train, cfg.valid):
        month = data.resolve(spec, Path(cfg.data_dir), progress)
        data.load(month.path)
    if cfg.cluster_class:  # the workers exist only once the flow creates the cluster: checked there
        from taxi_hpo import cluster

        cluster.import_cluster_class(cfg.cluster_class)
    from taxi_hpo.preflight import remote

    if cfg.address:  # before the store is created: a remote run may refuse a local one
        remote.check(cfg)  # (credentials included)
    else:  # a server that asks for credentials: one line, not a traceback from the first call
        from taxi_hpo.prefect_api import configured_api_url

        remote.check_credentials(cfg.resolved_tracking_uri, configured_api_url())
    # Creates the store from this (the flow's) process before any worker can race to migrate it.
    tracking.prepare_store(cfg.resolved_tracking_uri, cfg.experiment, cfg.artifact_root)
    if cfg.warm_start and cfg.warm_start != "latest" and not cfg.resume:
        tracking.load_search(cfg.resolved_tracking_uri, cfg.warm_start)  # one line if it is no search


def _ended(record: tracking.SearchRecord) -> set:
    """The search's trials that have ended: finished (pruned ones too) or failed for good."""
    return set(record.trials) | set(record.failed)
