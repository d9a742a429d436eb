"""The reference recipe as Prefect flows: preprocess once, the baseline, the search, register.

``search`` reads like the reference pipeline's ``main``; each step it calls is a task
(:mod:`~taxi_hpo.flows.tasks`) or a function named for what it does. The trials run on the
flow's DaskTaskRunner through :func:`run_trials`: hyperopt's TPE proposes, the scheduler of
:mod:`taxi_hpo.search` keeps the slots busy, a :class:`DaskTrialRunner` places each trial.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.context import FlowRunContext
from prefect.settings import PREFECT_API_URL

from taxi_hpo import timeline, tracking
from taxi_hpo.cluster import workers as cluster_workers
from taxi_hpo.cluster.runner import DaskTrialRunner
from taxi_hpo.cluster.workers import shared_with_workers
from taxi_hpo.config import RunConfig
from taxi_hpo.core import data as trip_data
from taxi_hpo.core import features
from taxi_hpo.core.features import PreparedData
from taxi_hpo.flows import tasks
from taxi_hpo.flows.history import History, load_history
from taxi_hpo.flows.reporting import (
    current_reporter,
    finish_report,
    layout_line,
    prepare_report,
    start_report,
)
from taxi_hpo.flows.signals import interrupted
from taxi_hpo.flows.summary import SearchResult, TrialsRun
from taxi_hpo.prefect_api import flush_to_api, without_heartbeats
from taxi_hpo.search import TPESearcher, reference_space, run_search
from taxi_hpo.search.multifidelity import MultiFidelitySearcher
from taxi_hpo.search.promotion import ladder
from taxi_hpo.search.pruning import Pruner
from taxi_hpo.search.scheduler import Budget
from taxi_hpo.search.tpe import startup_trials


@flow(name="preprocess")
def preprocess(train_path: str, valid_path: str) -> dict:
    """Load both months, fit on train only, transform both; cached by the files' content."""
    train_sha, valid_sha = trip_data.file_sha256(Path(train_path)), trip_data.file_sha256(Path(valid_path))
    state = tasks.transform_months(train_path, valid_path, train_sha, valid_sha, return_state=True)
    prepared = state.result()
    timeline.mark("data_prepared")
    return {"data": prepared, "cached": state.name == "Cached"}


@flow(name="taxi-hpo-search")
def search(config: dict) -> dict:
    """Preprocess once, baseline, TPE trials in parallel on Dask, register the best."""
    cfg, started = RunConfig.from_dict(config), time.time()
    timeline.mark("flow_started", started)
    experiment_id = tracking.prepare_store(cfg.resolved_tracking_uri, cfg.experiment, cfg.artifact_root)
    with without_heartbeats():  # a second or less: the search's own heartbeats cover it
        months = preprocess(*month_paths(cfg))
    prepared: PreparedData = months["data"]
    history = load_history(cfg, cfg.resolved_tracking_uri, experiment_id)
    cluster = connect(cfg, history)
    with open_parent_run(cfg, experiment_id, prepared, cluster, history) as parent:
        ctx = parent.trial_context(features.preprocessor_sha256(prepared.preprocessor))
        # The servers' credentials, then the data, once to each worker (see cluster.workers).
        with (
            shared_with_workers(cluster.client, prepared) as data,
            warm_workers(cluster.client, data, ctx) as warming,
        ):
            tasks.log_preprocessor(ctx, prepared.preprocessor.to_bytes())
            lr_rmse = history.lr_rmse if history.lr_rmse is not None else tasks.linear_baseline(prepared, ctx)
            prepare_report(cfg)  # its imports, while the trials run
            run = run_trials(cfg, cluster, data, ctx, history, warming)
            parent.ended_children.update(o.run_id for o in run.outcomes if o.run_id)
            report = start_report(parent.tracking_uri, parent.run_id, run, lr_rmse) if cfg.report else None
            flush_workers(cluster.client)
        version = None
        if cfg.register:
            version = tasks.register_best(run.outcomes, prepared, ctx, cfg.max_rmse, cfg.max_inference_time)
        result = SearchResult.collect(
            cfg, ctx, run, lr_rmse, started, version, months, cluster.client, history
        )
        parent.metrics.update(result.parent_metrics())
        parent.tags.update({"ended_on_timeout": "true"} if result.ended_on_timeout else {})
        return {**result.to_dict(), "report": finish_report(report, parent.run_id) if report else None}


@dataclass(frozen=True)
class Cluster:
    """The cluster as the search uses it: its Dask client, its trial slots, the trials in flight."""

    client: Any
    slots: int
    in_flight: int


def run_trials(
    cfg: RunConfig, cluster: Cluster, data, ctx: tracking.TrackingContext, history: History, warming: dict
) -> TrialsRun:
    """The TPE trials on the cluster until ``cfg.trials`` ended (or the budget ran out).

    ``warming``: each worker's warm-up (its core pool, for the thread plan). In async mode the
    slots follow the workers present (joining ones get a warm-up first); a batch keeps its size.
    """
    reporter = current_reporter()
    pruner = Pruner(cfg.prune, cfg.rounds)
    searcher = new_searcher(cfg, cluster, history)
    fidelity_of = searcher.fidelity if cfg.fidelity != "none" else None
    runner = trial_runner(cfg, cluster, data, ctx, history, pruner, warming, fidelity_of)
    if reporter:
        workers = cluster_workers.worker_count(cluster.client)
        reporter.start(
            cfg.trials, cluster.client.dashboard_link, layout_line(cfg, workers, cluster.slots, runner.plan)
        )
    # async: as many as the workers present hold (runner.capacity follows them); batch: fixed
    in_flight = runner.capacity if cfg.mode == "async" else cluster.in_flight
    budget = Budget.from_now(cfg.timeout_s, kill=cfg.timeout_kill)
    started = time.time()
    try:
        with cluster.client.as_current():
            outcomes = run_search(
                searcher,
                runner,
                cfg.trials,
                mode=cfg.mode,
                in_flight=in_flight,
                known=history.known,
                on_outcome=_on_outcome(pruner, reporter),
                budget=budget,
            )
        wall = time.time() - started
        runner.stop_following()
    finally:
        if reporter:
            reporter.stop()
    submitted = max(runner.submit_bytes.values(), default=0)
    run = TrialsRun(
        outcomes, started, wall, cluster.slots, runner.slot_seconds, list(runner.slots_seen), submitted
    )
    run.mark_timeline()
    return run


def new_searcher(cfg: RunConfig, cluster: Cluster, history: History):
    """TPE over the reference's space; with ``--fidelity``, over that ladder with promotion."""
    space = reference_space(cfg.max_depth)
    startup = startup_trials(cluster.in_flight, len(history.warm))
    warm = [w["params"] for w in history.warm]
    if cfg.fidelity == "none":
        return TPESearcher(space, cfg.seed, startup, warm_points=warm)
    return MultiFidelitySearcher(
        space, cfg.seed, startup, warm, ladder(cfg.fidelity), model=cfg.fidelity_model
    )


def trial_runner(
    cfg: RunConfig,
    cluster: Cluster,
    data,
    ctx: tracking.TrackingContext,
    history: History,
    pruner: Pruner,
    warming: dict,
    fidelity_of=None,
) -> DaskTrialRunner:
    """What places the search's trials on the workers, with the thread plan the warm-ups reported.

    Async mode: the runner follows the workers present (a joining worker is warmed up first), and
    its ``capacity`` says how many trials to keep in flight.
    """
    client = cluster.client
    warmed = cluster_workers.gather_by_worker(client, warming)
    # Read: their results need not stay on the workers (a worker Dask retires would first have to
    # move them to another one, a frozen or busy one included).
    warming.clear()
    timeline.mark("workers_warm")
    plan = cluster_workers.thread_plan(client, warmed, cfg.threads_per_worker, cfg.elastic_threads)
    warm_tags = {i: {tracking.WARM_FROM_TAG: w["from"]} for i, w in enumerate(history.warm)}
    runner = DaskTrialRunner(
        tasks.trial.submit,
        data,
        ctx,
        cfg.rounds,
        cfg.threads_per_worker,
        client=client,
        plan=plan,
        pruner=pruner,
        on_failed=_mark_failed(ctx),
        run_tags=warm_tags,
        fidelity_of=fidelity_of,
    )
    if cfg.mode == "async":
        api_url = PREFECT_API_URL.value()
        planned = {worker: slot.slots for worker, slot in plan.slots.items()}
        runner.follow(
            planned,
            lambda addr: cluster_workers.on_worker(client, addr, tasks.warm_worker, data, ctx, api_url),
            target_slots=cfg.adapt[1] * max(planned.values(), default=1) if cfg.adapt else 0,
        )
    return runner


def warm_workers(client, data, ctx: tracking.TrackingContext):
    """One warm-up task per worker (imports, matrices, the store ready before the first trial),
    running while the preprocessor is logged and the baseline fits: ``{worker: future}`` for the
    block, finished before the data is taken back."""
    return cluster_workers.running_on_each_worker(
        client, tasks.warm_worker, data, ctx, PREFECT_API_URL.value()
    )


def flush_workers(client) -> None:
    """Send what the workers queued for the Prefect API (trial log lines, up to 2 s old)."""
    cluster_workers.run_on_each_worker(client, flush_to_api)
    timeline.mark("workers_flushed")


def month_paths(cfg: RunConfig) -> tuple[str, str]:
    """The training and validation months as parquet paths (downloaded and cached if need be)."""
    folder = Path(cfg.data_dir)
    return str(trip_data.resolve(cfg.train, folder).path), str(trip_data.resolve(cfg.valid, folder).path)


def connect(cfg: RunConfig, history: History) -> Cluster:
    """The flow run's cluster (connecting to, or creating, it), its slots and trials in flight.

    A cluster made by ``--cluster-class`` waits for its first worker and passes the checks
    ``--address`` makes (stores reachable from the workers, same taxi-hpo, Python and Prefect).
    """
    client = FlowRunContext.get().task_runner.client
    if cfg.cluster_class:
        from taxi_hpo.preflight import remote

        cluster_workers.wait_for_first_worker(client, 600.0, f"--cluster-class {cfg.cluster_class}")
        remote.check_cluster_workers(client, cfg.resolved_tracking_uri)
    timeline.mark("cluster_connected")
    slots = cluster_workers.slots(client, cfg.workers if cfg.local_cluster else None)
    return Cluster(client, slots, history.in_flight(cfg, slots))


def open_parent_run(
    cfg: RunConfig, experiment_id: str, prepared: PreparedData, cluster: Cluster, history: History
):
    """The search's parent run, new or the resumed one (:func:`taxi_hpo.tracking.parent_run`)."""
    params = parent_params(cfg, prepared, cluster.slots, cluster.in_flight)
    return tracking.parent_run(
        cfg.resolved_tracking_uri,
        experiment_id,
        params,
        parent_tags(history),
        resume=history.record,
        interrupted=interrupted,
    )


def parent_params(cfg: RunConfig, prepared: PreparedData, slots: int, in_flight: int) -> dict:
    """The parameters a new search's parent run records (``--resume`` reads them back)."""
    return {
        "train": cfg.train,
        "valid": cfg.valid,
        "data_dir": str(Path(cfg.data_dir).resolve()),
        "mode": cfg.mode,
        "workers": cfg.workers,
        "in_flight": in_flight,
        "prune": cfg.prune,
        "fidelity": cfg.fidelity,
        "fidelity_model": cfg.fidelity_model,
        "warm_start": cfg.warm_start or "",
        "warm_start_trials": cfg.warm_start_trials,
        "threads_per_worker": cfg.threads_per_worker,
        "elastic_threads": cfg.elastic_threads,
        "slots": slots,
        "seed": cfg.seed,
        "trials": cfg.trials,
        "rounds": cfg.rounds,
        "max_depth": cfg.max_depth,
        "batch_size": cfg.batch_size or "",
        "address": cfg.address or "local",
        # how it ends: a --resume keeps these (preflight.resume_config)
        "max_rmse": cfg.max_rmse,
        "max_inference_time": cfg.max_inference_time,
        "register": cfg.register,
        "report": cfg.report,
        "train_sha256": prepared.train_sha256,
        "valid_sha256": prepared.valid_sha256,
        "n_features": prepared.preprocessor.n_features,
    }


def parent_tags(history: History) -> dict:
    """The tags the parent run gets: this flow run, and for a new search its warm-start points."""
    flow_run_id = str(FlowRunContext.get().flow_run.id)
    if history.record is not None:
        return {"resumed_by_flow_run_id": flow_run_id}
    return {"flow_run_id": flow_run_id, tracking.WARM_TAG: json.dumps(history.warm)}


def _mark_failed(ctx: tracking.TrackingContext):
    """The runner's callback for a trial that failed for good: recorded on the parent run."""
    return lambda trial_id, params, error: tracking.mark_trial_failed(ctx, trial_id, params, error)


def _on_outcome(pruner: Pruner, reporter):
    """What happens as the scheduler records each outcome, in its order (a batch at its end)."""

    def record(outcome) -> None:
        pruner.record(outcome.trial_id, outcome.curve)
        if reporter:
            reporter.update(outcome)

    return record
