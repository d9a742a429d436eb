"""Thin Prefect tasks and flows: the reference recipe, with trials on a DaskTaskRunner.

Each task calls one function of the core or the tracking adapter; the search loop itself is
``search.run_search`` driving a :class:`~taxi_hpo.cluster.runner.DaskTrialRunner`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from contextvars import ContextVar
from datetime import timedelta
from pathlib import Path
from typing import Protocol

import distributed
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_dask import DaskTaskRunner

from taxi_hpo.core import data as data_mod
from taxi_hpo import tracking, trials
from taxi_hpo.cluster import credentials, runner as dask_runner, worker_data
from taxi_hpo.core import features, models
from taxi_hpo.cluster.spec import THREAD_ENV, ClusterSpec, configure_dask
from taxi_hpo.config import RunConfig
from taxi_hpo.prefect_api import (cache_context_hydration, cache_settings_serialization, flush_to_api, prefect_api,
                                  quiet_drain_warnings, start_early)
from taxi_hpo.search import TPESearcher, TrialOutcome, reference_space, run_search
from taxi_hpo.search.scheduler import Budget
from taxi_hpo.search.pruning import Pruner
from taxi_hpo.search.space import MIN_MAX_DEPTH, decode_logged
from taxi_hpo.search.threads import ThreadPlan
from taxi_hpo.search.tpe import startup_trials


class Reporter(Protocol):
    """Progress sink of a search (the CLI's progress bar); called from the flow process."""

    def start(self, total: int, dashboard: str | None) -> None: ...
    def update(self, outcome: TrialOutcome) -> None: ...
    def stop(self) -> None: ...


_REPORTER: ContextVar[Reporter | None] = ContextVar("taxi_hpo_reporter", default=None)


def current_reporter() -> Reporter | None:
    # Flows reach the ContextVar through this function: Prefect pickles the flow's function by
    # value into every task's context, and a ContextVar global would make that fail.
    return _REPORTER.get()


# -- preprocessing: once per search, reused across searches on the same files ----------------

def _preprocess_key(_context, parameters) -> str:
    return "taxi-hpo-preprocess-" + features.dataset_key(parameters["train_sha256"], parameters["valid_sha256"])


@task(name="transform-months", cache_key_fn=_preprocess_key, persist_result=True,
      cache_expiration=timedelta(days=30))
def transform_months(train_path: str, valid_path: str, train_sha256: str, valid_sha256: str):
    return features.prepare_data(data_mod.load(Path(train_path)), data_mod.load(Path(valid_path)),
                                 train_sha256, valid_sha256)


@flow(name="preprocess")
def preprocess(train_path: str, valid_path: str) -> dict:
    """Load both months, fit on train only, transform both; cached by the files' content."""
    train_sha, valid_sha = data_mod.file_sha256(Path(train_path)), data_mod.file_sha256(Path(valid_path))
    state = transform_months(train_path, valid_path, train_sha, valid_sha, return_state=True)
    return {"data": state.result(), "cached": state.name == "Cached"}


# -- tasks -------------------------------------------------------------------------------------

@task(name="log-preprocessor", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def log_preprocessor(ctx: tracking.TrackingContext, blob: bytes) -> bool:
    return tracking.log_preprocessor_once(ctx, blob)


@task(name="linear-baseline", cache_policy=NO_CACHE)
def linear_baseline(prepared, ctx: tracking.TrackingContext) -> float:
    rmse = models.linear_baseline(prepared)
    run_id = tracking.start_child_run(ctx, "linear-regression", {"model": "LinearRegression"})
    tracking.finish_child_run(ctx, run_id, {"model": "LinearRegression"}, {"rmse_valid": rmse})
    return rmse


@task(name="trial", task_run_name="trial-{trial_id}", retries=1, retry_delay_seconds=1,
      cache_policy=NO_CACHE)
def trial(trial_id: int, params: dict, prepared, ctx: tracking.TrackingContext, rounds: int,
          nthread: int, start_threads: int | None = None, control_key: str | None = None, elastic: bool = False,
          prune_at: dict | None = None, run_tags: dict | None = None) -> dict:
    threads = dask_runner.thread_source(control_key, trial_id) if control_key and elastic else None
    stop = dask_runner.stop_source(control_key, trial_id) if control_key else None
    try:
        result = trials.run_trial(trial_id, params, worker_data.resolve(prepared), ctx, rounds, nthread, threads,
                                  start_threads, prune_at, stop, run_tags)
    finally:
        if control_key:
            dask_runner.forget_trial(control_key, trial_id)
    # Shipped to the Prefect API from whichever worker ran it (shown under the task run).
    if result.get("cancelled"):
        get_run_logger().info("trial %d on %s: stopped, the time budget ran out", trial_id, result["worker"])
        return result
    pruned = f", pruned at round {result['pruned_at']}" if result.get("pruned_at") else ""
    get_run_logger().info("trial %d on %s: rmse_valid %.4f, fit %.2f s%s, MLflow run %s", trial_id,
                          result["worker"], result["loss"], result["fit_s"], pruned, result["run_id"])
    return result


@task(name="register-best", cache_policy=NO_CACHE)
def register_best(outcomes: list[TrialOutcome], prepared, ctx: tracking.TrackingContext,
                  max_rmse: float, max_inference_time: float) -> str | None:
    return tracking.register_best(outcomes, prepared.preprocessor, ctx, max_rmse, max_inference_time)


# -- the flow ----------------------------------------------------------------------------------

@flow(name="taxi-hpo-search")
def search(config: dict) -> dict:
    """Preprocess once, baseline, TPE trials in parallel on Dask, register the best."""
    cfg = RunConfig.from_dict(config)
    wall_start = time.time()
    tracking_uri = cfg.resolved_tracking_uri
    experiment_id = tracking.prepare_store(tracking_uri, cfg.experiment, Path(cfg.workdir) / "mlartifacts")
    train_file = data_mod.resolve(cfg.train, Path(cfg.data_dir))
    valid_file = data_mod.resolve(cfg.valid, Path(cfg.data_dir))
    pre = preprocess(str(train_file.path), str(valid_file.path))
    prepared = pre["data"]
    client = FlowRunContext.get().task_runner.client  # connects to (or creates) the cluster
    if cfg.cluster_class:
        _check_created_cluster(cfg, client)
    slots = _slots(cfg, client)
    in_flight = slots if cfg.mode == "async" else (cfg.batch_size or slots)
    record = tracking.load_search(tracking_uri, cfg.resume) if cfg.resume else None
    flow_run_id = str(FlowRunContext.get().flow_run.id)
    if record is None:
        warm = _warm_points(cfg, tracking_uri, experiment_id)
        parent_run_id = tracking.start_parent_run(tracking_uri, experiment_id,
                                                  _parent_params(cfg, prepared, slots, in_flight),
                                                  {"flow_run_id": flow_run_id, tracking.WARM_TAG: json.dumps(warm)})
        known = {}
    else:
        parent_run_id, experiment_id = record.run_id, record.experiment_id
        if cfg.mode == "batch":  # the original batch size, or the replay would diverge
            in_flight = int(record.params.get("in_flight", in_flight))
        tracking.close_stale_children(tracking_uri, parent_run_id)
        tracking.reopen_run(tracking_uri, parent_run_id, {"resumed_by_flow_run_id": flow_run_id})
        known = _known_outcomes(record)
        warm = json.loads(record.tags.get(tracking.WARM_TAG) or "[]")  # the points it started with
    ctx = tracking.TrackingContext(tracking_uri, experiment_id, parent_run_id,
                                   features.preprocessor_sha256(prepared.preprocessor))
    status, metrics, outcomes = "FAILED", {}, []
    reporter = current_reporter()
    handed = data_ref = None
    try:
        # Before anything runs there: workers of a cluster this process did not start get the
        # tracking server's and the Prefect API's credentials from this process's environment
        # (a worker plugin over the scheduler connection; never a task argument, see credentials).
        handed = credentials.hand_to_workers(client)
        # Once to each worker, present or joining later, and out of reach of Dask's memory manager.
        data_ref = worker_data.share(client, prepared)
        warming = _warm_workers(client, data_ref, ctx)  # overlaps with the two steps below
        log_preprocessor(ctx, prepared.preprocessor.to_bytes())
        lr_rmse = record.lr_rmse if record and record.lr_rmse is not None else linear_baseline(prepared, ctx)
        plan = _thread_plan(cfg, client, _gather_by_worker(client, warming))
        searcher = TPESearcher(reference_space(cfg.max_depth), cfg.seed, startup_trials(in_flight, len(warm)),
                               warm_points=[w["params"] for w in warm])
        pruner = Pruner(cfg.prune, cfg.rounds)
        runner = dask_runner.DaskTrialRunner(trial.submit, data_ref, ctx, cfg.rounds, cfg.threads_per_worker,
                                             prepared, client, plan=plan, pruner=pruner,
                                             run_tags={i: {tracking.WARM_FROM_TAG: w["from"]} for i, w in enumerate(warm)})
        if reporter:
            reporter.start(cfg.trials, client.dashboard_link, _layout(cfg, client, slots, plan))
        if cfg.mode == "async":  # slots follow the workers present; a batch keeps its size
            api_url = PREFECT_API_URL.value()
            # starts from the workers the thread plan knows; later ones join it through capacity()
            planned = {worker: slot.slots for worker, slot in plan.slots.items()}
            runner.follow(planned, lambda addr: client.submit(
                _warm_worker, data_ref, ctx, api_url, workers=[addr], allow_other_workers=False, pure=False),
                target_slots=cfg.adapt[1] * max(planned.values(), default=1) if cfg.adapt else 0)
            in_flight = runner.capacity
        search_start = time.time()
        budget = Budget.from_now(cfg.timeout_s, kill=cfg.timeout_kill)
        with client.as_current():
            outcomes = run_search(searcher, runner, cfg.trials, mode=cfg.mode, in_flight=in_flight,
                                  known=known, on_outcome=_on_outcome(pruner, reporter), budget=budget)
        search_wall = time.time() - search_start
        runner.stop_following()
        if reporter:
            reporter.stop()
        # The report (~2 s of plotting) is drawn while the workers flush and the best model registers.
        report_job = _start_report(tracking_uri, parent_run_id, outcomes, {
            "lr_rmse": lr_rmse, "search_wall_s": search_wall,
            "utilisation": round(sum(o.busy_s for o in outcomes) / (slots * search_wall), 4) if search_wall > 0 else None,
        }) if cfg.report else None
        _flush_workers(client)
        version = (register_best(outcomes, prepared, ctx, cfg.max_rmse, cfg.max_inference_time)
                   if cfg.register else None)
        summary = _summary(cfg, ctx, outcomes, lr_rmse, slots, search_wall, time.time() - wall_start,
                           version, pre["cached"], client, runner.slot_seconds)
        summary["slots_seen"] = [[round(t - search_start, 3), n] for t, n in runner.slots_seen]
        summary["search_started"] = search_start
        summary["warm_start"] = [w["from"] for w in warm]
        summary["submit_bytes_max"] = max(runner.submit_bytes.values(), default=0)
        summary["data_bytes"] = prepared.nbytes
        metrics = {k: summary[k] for k in ("best_rmse", "lr_rmse", "utilisation", "search_wall_s")
                   if summary[k] is not None}
        if summary["ended_on_timeout"]:
            tracking.tag_run(tracking_uri, parent_run_id, {"ended_on_timeout": "true"})
        summary["report"] = _finish_report(report_job, parent_run_id) if report_job else None
        status = "FINISHED"
        return summary
    except BaseException:
        status = "KILLED" if _interrupted() else "FAILED"
        raise
    finally:
        if reporter:
            reporter.stop()
        credentials.withdraw(client, handed)
        worker_data.unshare(client, data_ref)
        tracking.close_stale_children(tracking_uri, parent_run_id, keep={o.run_id for o in outcomes if o.run_id})
        tracking.end_run(tracking_uri, parent_run_id, status, metrics=metrics)


def _start_report(tracking_uri: str, parent_run_id: str, outcomes: list[TrialOutcome], metrics: dict):
    """The search's report on its parent run (``report/``), made in a thread of its own, with
    the trials' ends as the search saw them (a busy tracking server may not show them yet)."""
    from concurrent.futures import ThreadPoolExecutor

    from taxi_hpo import report

    ended = {o.run_id: report.ended_as(o.loss, o.pruned_at, o.cancelled, o.finished) for o in outcomes if o.run_id}
    pool = ThreadPoolExecutor(1, thread_name_prefix="taxi-hpo-report")
    job = pool.submit(report.publish, tracking_uri, parent_run_id, metrics=metrics, status="FINISHED", ended=ended)
    pool.shutdown(wait=False)
    return job


def _finish_report(job, parent_run_id: str) -> str | None:
    """Where the report is, once made; one that could not be made is a warning, never a failed
    search."""
    from taxi_hpo import report

    try:
        job.result()
    except Exception as exc:  # noqa: BLE001 - the search itself succeeded
        get_run_logger().warning("no report for this search (%s: %s); `taxi-hpo report %s` tries again",
                                 type(exc).__name__, exc, parent_run_id)
        return None
    return f"{report.ARTIFACT_DIR}/report.html"


def _warm_points(cfg: RunConfig, tracking_uri: str, experiment_id: str) -> list[dict]:
    """``--warm-start``: the best points of an earlier search, as this search's first trials:
    ``[{"from": "PARENT:TRIAL", "params": point}]``; ``max_depth`` kept inside this space."""
    if not cfg.warm_start:
        return []
    source = (tracking.latest_search(tracking_uri, experiment_id) if cfg.warm_start == "latest"
              else cfg.warm_start)
    if source is None:
        get_run_logger().warning("--warm-start latest: no earlier search in this experiment; starting cold")
        return []
    warm = []
    for best in tracking.best_points(tracking_uri, source, cfg.warm_start_trials):
        point = decode_logged(best["params"])
        point["max_depth"] = min(max(int(point["max_depth"]), MIN_MAX_DEPTH), cfg.max_depth)
        warm.append({"from": best["from"], "params": point})
    return warm


def _on_outcome(pruner: Pruner, reporter: Reporter | None):
    """What happens as the scheduler records each outcome, in its order (a batch at its end)."""
    def record(outcome: TrialOutcome) -> None:
        pruner.record(outcome.trial_id, outcome.curve)
        if reporter:
            reporter.update(outcome)

    return record


def _on_each_worker(client, fn, *args) -> dict:
    """Submit ``fn(*args)`` once to every worker of the cluster, pinned there: ``{worker: future}``."""
    workers = list(client.scheduler_info(n_workers=-1)["workers"])
    return {w: client.submit(fn, *args, workers=[w], allow_other_workers=False, pure=False) for w in workers}


def _gather_by_worker(client, futures: dict) -> dict:
    """``{worker: result}`` of the futures that succeeded."""
    results = client.gather(list(futures.values()), errors="skip")
    done = [w for w, f in futures.items() if f.status == "finished"]
    return dict(zip(done, results))


def _warm_workers(client, data_ref, ctx: tracking.TrackingContext) -> dict:
    """One warm-up task per worker: imports, matrices and store ready before the first trial."""
    return _on_each_worker(client, _warm_worker, data_ref, ctx, PREFECT_API_URL.value())


def _thread_plan(cfg: RunConfig, client, warmed: dict) -> ThreadPlan:
    """Where trials run and their threads: each worker's slots and the core pool it reported."""
    nthreads = client.nthreads()
    workers, pool_cores = {}, {}
    for worker, slots in nthreads.items():
        facts = warmed.get(worker) or {"pool": f"unknown:{worker}", "cores": slots * cfg.threads_per_worker}
        workers[worker] = (facts["pool"], slots)
        pool_cores[facts["pool"]] = facts["cores"]
    return ThreadPlan(workers, pool_cores, base=cfg.threads_per_worker, elastic=cfg.elastic_threads)


def _warm_worker(prepared, ctx: tracking.TrackingContext, api_url: str) -> dict:
    # Prefect's task engine and its API client load lazily on a worker's first task: ~1 s. The
    # flow's API explicitly: a remote worker started without PREFECT_API_URL would otherwise
    # start a temporary server of its own here.
    import prefect.task_engine  # noqa: F401
    from prefect.client.orchestration import get_client

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as api:
        api.api_healthcheck()
    quiet_drain_warnings()
    cache_context_hydration()  # also on remote workers, which have no preload of ours
    return trials.warm_up(worker_data.resolve(prepared), ctx)


def _flush_workers(client, timeout_s: float = 10.0) -> None:
    """Trial log lines and events wait in each worker's queue (up to 2 s): send them before the flow ends."""
    try:
        distributed.wait(list(_on_each_worker(client, flush_to_api).values()), timeout=timeout_s)
    except Exception:  # noqa: BLE001 - a late log line is not worth failing a finished search
        pass


_SIGINT = threading.Event()


def _on_sigint(signum, frame):
    _SIGINT.set()
    raise KeyboardInterrupt


def interrupted() -> bool:
    """True once Ctrl-C reached ``execute``, even where a library wrapped the KeyboardInterrupt
    in another exception (pydantic does, when it lands inside a serializer)."""
    return _SIGINT.is_set()


def _interrupted() -> bool:
    return interrupted() or isinstance(sys.exc_info()[1], KeyboardInterrupt)


def _slots(cfg: RunConfig, client) -> int:
    if cfg.address is None and cfg.cluster_class is None:
        return cfg.workers
    return max(sum(client.nthreads().values()), 1)


def _check_created_cluster(cfg: RunConfig, client, timeout_s: float = 600.0) -> None:
    """A cluster made by ``--cluster-class``: wait for its first worker (a batch system may
    queue it), then the checks ``--address`` makes before a run (stores reachable from the
    workers, same taxi-hpo, Python and Prefect), before the search's parent run exists."""
    from taxi_hpo.preflight import remote
    from taxi_hpo.errors import ClusterError

    try:
        client.wait_for_workers(1, timeout=timeout_s)
    except (TimeoutError, distributed.TimeoutError):
        raise ClusterError(f"--cluster-class {cfg.cluster_class}: no worker joined within {timeout_s:.0f} s "
                           "(a queued batch job? check the cluster's logs)") from None
    remote.check_cluster_workers(client, cfg.resolved_tracking_uri)


def _layout(cfg: RunConfig, client, slots: int, plan: ThreadPlan) -> str:
    where = (f"scheduler {cfg.address}" if cfg.address else
             f"{cfg.cluster_class}" + (f", adapting between {cfg.adapt[0]} and {cfg.adapt[1]} workers" if cfg.adapt
                                       else "") if cfg.cluster_class else "local cluster")
    if cfg.mode == "async" and (cfg.address or cfg.cluster_class) and not cfg.adapt:
        where += "; more as workers join"
    workers = len(client.nthreads())
    base = cfg.threads_per_worker
    line = (f"{workers} worker{'s' * (workers != 1)} x {base} XGBoost thread{'s' * (base != 1)}, "
            f"{slots} trial{'s' * (slots != 1)} at a time ({where})")
    if plan.elastic:
        most = max(plan.pool_cores.values(), default=base)
        line += f"; elastic threads: a trial takes idle cores, up to {most}"
    if cfg.default_layout and plan.elastic and base == 1:
        line += (f" (the default for {cfg.workers} usable core{'s' * (cfg.workers != 1)}: a trial per core, "
                 "no thread waiting on another; a freed core goes to the trials still running)")
    return line


def _known_outcomes(record: tracking.SearchRecord) -> dict[int, TrialOutcome]:
    known = {tid: TrialOutcome(tid, decode_logged(t["params"]), t["loss"], run_id=t["run_id"], metrics=t["metrics"],
                               curve=t.get("curve") or {}, pruned_at=t.get("pruned_at"))
             for tid, t in record.trials.items()}
    for tid, failure in record.failed.items():
        known[tid] = TrialOutcome(tid, failure["params"], None, error=failure["error"])
    return known


def _parent_params(cfg: RunConfig, prepared, slots: int, in_flight: int) -> dict:
    return {
        "train": cfg.train, "valid": cfg.valid, "data_dir": str(Path(cfg.data_dir).resolve()),
        "mode": cfg.mode, "workers": cfg.workers, "in_flight": in_flight, "prune": cfg.prune,
        "warm_start": cfg.warm_start or "", "warm_start_trials": cfg.warm_start_trials,
        "threads_per_worker": cfg.threads_per_worker, "elastic_threads": cfg.elastic_threads,
        "slots": slots, "seed": cfg.seed,
        "trials": cfg.trials, "rounds": cfg.rounds, "max_depth": cfg.max_depth,
        "batch_size": cfg.batch_size or "", "address": cfg.address or "local",
        "train_sha256": prepared.train_sha256, "valid_sha256": prepared.valid_sha256,
        "n_features": prepared.preprocessor.n_features,
    }


def _summary(cfg, ctx, outcomes, lr_rmse, slots, search_wall, wall, version, cached, client,
             slot_seconds: float = 0.0) -> dict:
    ok = [o for o in outcomes if o.ok]
    complete = [o for o in ok if o.complete]  # a pruned trial's RMSE is of an unfinished model
    cancelled = [o for o in outcomes if o.cancelled]
    best = min(complete, key=lambda o: o.loss) if complete else None
    busy = sum(o.busy_s for o in outcomes)
    return {
        "parent_run_id": ctx.parent_run_id,
        "experiment_id": ctx.experiment_id,
        "tracking_uri": ctx.tracking_uri,
        "mlflow_ui": tracking.ui_link(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id),
        "lr_rmse": round(lr_rmse, 4),
        "best_rmse": best.loss if best else None,
        "best_params": best.params if best else None,
        "best_run_id": best.run_id if best else None,
        "trials_done": len(ok),
        "trials_failed": len(outcomes) - len(ok) - len(cancelled),
        "trials_pruned": len(ok) - len(complete),
        "trials_cancelled": len(cancelled),
        "trials_not_started": cfg.trials - len(outcomes),
        # the budget ran out before the search's trials: --resume runs the rest
        "ended_on_timeout": cfg.timeout_s is not None and len(outcomes) - len(cancelled) < cfg.trials,
        "prune": cfg.prune,
        "trial_params": [o.params for o in outcomes],
        "trials": [_timing(o) for o in outcomes],
        "trial_rmse": [o.loss for o in outcomes],
        "mode": cfg.mode,
        "slots": slots,
        "wall_s": round(wall, 3),
        "search_wall_s": round(search_wall, 3),
        # busy slot-seconds over the slot-seconds the cluster offered (its slots may change)
        "utilisation": round(busy / (slot_seconds or slots * search_wall), 4) if search_wall > 0 else None,
        "preprocessor_artifacts": tracking.count_preprocessor_artifacts(ctx.tracking_uri, ctx.parent_run_id),
        "preprocess_cached": cached,
        "registered_version": version,
        "dashboard": client.dashboard_link,
    }


def _timing(o: TrialOutcome) -> dict:
    return {"trial_id": o.trial_id, "loss": o.loss, "started": o.started, "finished": o.finished,
            "fit_s": o.fit_s, "worker": o.worker, "run_id": o.run_id, "error": o.error, "pruned_at": o.pruned_at,
            "matrix_builds": o.metrics.get("worker_matrix_builds"),
            **{k: o.metrics.get(k) for k in ("train_s", "train_cpu_s", "threads_mean")}}


def execute(cfg: RunConfig, reporter: Reporter | None = None) -> dict:
    """Run the search flow against one Prefect API and the cluster ``cfg`` asks for.

    A local cluster and the Prefect API server start side by side (each takes seconds).
    """
    spec = ClusterSpec(workers=cfg.workers, threads_per_worker=cfg.threads_per_worker, address=cfg.address)
    token = _REPORTER.set(reporter)
    _SIGINT.clear()
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _on_sigint) if in_main else None
    # Workers get the API's URL in their environment: a worker process without one starts a
    # temporary API server of its own the first time anything Prefect runs there outside a task
    # (measured: two extra servers, ~5 s before the first trial on 2 cores).
    api_url = start_early()
    local = (spec.start_local({"PREFECT_API_URL": api_url})
             if cfg.address is None and cfg.cluster_class is None else None)
    cache_settings_serialization()  # ~30 ms less of the flow per submitted trial (see there)
    saved_env = {name: os.environ.get(name) for name in (*THREAD_ENV, "DASK_LOGGING__DISTRIBUTED")}
    try:
        with prefect_api():
            if cfg.cluster_class:
                # prefect-dask's convention: the runner creates the cluster (and its adaptivity)
                # inside the flow run, and closes it with the flow run.
                configure_dask(cfg.threads_per_worker)
                # the processes it spawns log at INFO to stderr unless their environment says not to
                os.environ["DASK_LOGGING__DISTRIBUTED"] = "error"
                runner = DaskTaskRunner(cluster_class=cfg.cluster_class, cluster_kwargs=dict(cfg.cluster_kwargs),
                                        adapt_kwargs={"minimum": cfg.adapt[0], "maximum": cfg.adapt[1]}
                                        if cfg.adapt else None)
            else:
                runner = DaskTaskRunner(address=local.address()) if local else spec.task_runner()
            return search.with_options(task_runner=runner)(cfg.to_dict())
    finally:
        _REPORTER.reset(token)
        if in_main:
            signal.signal(signal.SIGINT, previous)
        if local:
            local.close()
        for name, value in saved_env.items():  # a nanny writes OMP_NUM_THREADS into this process, and
            # the cluster manager's logging variable must not reach what this process starts later
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
