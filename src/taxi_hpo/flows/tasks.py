"""The search's Prefect tasks, and the warm-up each worker runs before its first trial.

Each task calls one function of the core or of the tracking adapter: what it computes is there,
what Prefect adds (retries, caching, a name in the UI, a log line under the task run) is here.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.settings import PREFECT_API_URL, temporary_settings

from taxi_hpo import timeline, tracking
from taxi_hpo.cluster import runner as dask_runner
from taxi_hpo.cluster import worker_data
from taxi_hpo.core import data, features, models
from taxi_hpo.core.features import PreparedData
from taxi_hpo.flows import trials
from taxi_hpo.prefect_api import cache_context_hydration, quiet_drain_warnings
from taxi_hpo.search import TrialOutcome


def _preprocess_key(_context, parameters) -> str:
    return "taxi-hpo-preprocess-" + features.dataset_key(
        parameters["train_sha256"], parameters["valid_sha256"]
    )


@task(
    name="transform-months",
    cache_key_fn=_preprocess_key,
    persist_result=True,
    cache_expiration=timedelta(days=30),
)
def transform_months(train_path: str, valid_path: str, train_sha256: str, valid_sha256: str) -> PreparedData:
    """Fit the DictVectorizer on the training month and transform both months.

    Cached by the two files' content (30 days): a second search on the same months skips it.
    """
    return features.prepare_data(
        data.load(Path(train_path)), data.load(Path(valid_path)), train_sha256, valid_sha256
    )


@task(name="log-preprocessor", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def log_preprocessor(ctx: tracking.TrackingContext, blob: bytes) -> bool:
    """The fitted preprocessor on the parent run, once a search (the guard); True if logged now."""
    return tracking.log_preprocessor_once(ctx, blob)


def _baseline_key(_context, parameters) -> str:
    return f"taxi-hpo-baseline-{parameters['prepared'].key}-{models.linear_baseline_version()}"


@task(
    name="fit-linear-baseline",
    cache_key_fn=_baseline_key,
    persist_result=True,
    cache_expiration=timedelta(days=30),
)
def fit_linear_baseline(prepared: PreparedData) -> float:
    """The reference's LinearRegression fitted on the training month; its validation RMSE.

    Cached like the preprocessing, by the data's content (and scikit-learn's version): a second
    search on the same months skips the fit (2.6 s of the flow's start measured on 2 cores).
    """
    return models.linear_baseline(prepared)


@task(name="linear-baseline", cache_policy=NO_CACHE)
def linear_baseline(prepared: PreparedData, ctx: tracking.TrackingContext) -> float:
    """The reference's LinearRegression, logged as a child run; its validation RMSE."""
    state = fit_linear_baseline(prepared, return_state=True)
    rmse = state.result()
    run_id = tracking.start_child_run(ctx, "linear-regression", {"model": "LinearRegression"})
    cached = {"cached": str(state.name == "Cached").lower()}  # the fit of an earlier search
    tracking.finish_child_run(ctx, run_id, {"model": "LinearRegression"}, {"rmse_valid": rmse}, tags=cached)
    timeline.mark("baseline_done")
    return rmse


def _worth_retrying(task, task_run, state) -> bool:
    """A trial is retried once where it ran, unless that worker holds no copy of the data (the
    flow places it again elsewhere: ``cluster.runner``)."""
    return not worker_data.failed_for_missing_data(state)


@task(
    name="trial",
    task_run_name="trial-{trial_id}",
    retries=1,
    retry_delay_seconds=1,
    retry_condition_fn=_worth_retrying,
    cache_policy=NO_CACHE,
)
def trial(
    trial_id: int,
    params: dict,
    data: worker_data.DataRef,
    ctx: tracking.TrackingContext,
    rounds: int,
    nthread: int,
    start_threads: int | None = None,
    control_key: str | None = None,
    elastic: bool = False,
    prune_at: dict | None = None,
    run_tags: dict | None = None,
    fidelity: dict | None = None,
) -> dict:
    """One TPE trial on a Dask worker: fit XGBoost, log its child run, return its outcome.

    ``data`` names the prepared months the worker already holds (see ``cluster.worker_data``);
    ``control_key`` connects the trial to the runner's thread and stop controls (elastic
    threads, the time budget).
    """
    threads = dask_runner.thread_source(control_key, trial_id) if control_key and elastic else None
    stop = dask_runner.stop_source(control_key, trial_id) if control_key else None
    try:
        result = trials.run_trial(
            trial_id,
            params,
            worker_data.resolve(data),
            ctx,
            rounds,
            nthread,
            threads,
            start_threads,
            prune_at,
            stop,
            run_tags,
            fidelity,
        )
    finally:
        if control_key:
            dask_runner.forget_trial(control_key, trial_id)
    # Shipped to the Prefect API from whichever worker ran it (shown under the task run).
    if result.get("cancelled"):
        get_run_logger().info("trial %d on %s: stopped, the time budget ran out", trial_id, result["worker"])
        return result
    pruned = f", pruned at round {result['pruned_at']}" if result.get("pruned_at") else ""
    if fidelity and not fidelity["complete"]:
        rounds = fidelity["rounds"] or "all"
        pruned += f", rung {fidelity['rung']} ({fidelity['rows']:.3g} of the rows, {rounds} rounds)"
    get_run_logger().info(
        "trial %d on %s: rmse_valid %.4f, fit %.2f s%s, MLflow run %s",
        trial_id,
        result["worker"],
        result["loss"],
        result["fit_s"],
        pruned,
        result["run_id"],
    )
    return result


@task(name="register-best", cache_policy=NO_CACHE)
def register_best(
    outcomes: list[TrialOutcome],
    prepared: PreparedData,
    ctx: tracking.TrackingContext,
    max_rmse: float,
    max_inference_time: float,
) -> str | None:
    """Register the best trial within the thresholds as ``@staging``; its version, or None."""
    version = tracking.register_best(outcomes, prepared.preprocessor, ctx, max_rmse, max_inference_time)
    timeline.mark("registered")
    return version


def warm_worker(data: worker_data.DataRef, ctx: tracking.TrackingContext, api_url: str) -> dict:
    """Run once on each worker before the search (a plain Dask task, not a Prefect one).

    Prefect's task engine and its API client load lazily on a worker's first task: ~1 s. The
    flow's API explicitly: a remote worker started without PREFECT_API_URL would otherwise
    start a temporary server of its own here. Returns the worker's core pool (see
    :func:`taxi_hpo.flows.trials.warm_up`).
    """
    import prefect.task_engine  # noqa: F401
    from prefect.client.orchestration import get_client

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as api:
        api.api_healthcheck()
    quiet_drain_warnings()
    cache_context_hydration()  # also on remote workers, which have no preload of ours
    return trials.warm_up(worker_data.resolve(data), ctx)
