"""Where a search stops scaling: TPE's suggestion time, and the orchestration ceiling.

``tpe``: the time of one ask (``TPESearcher.suggest``) and one tell (``record``) once the history
holds N trials, pure TPE with synthetic losses (no Dask, no Prefect, no XGBoost).

    .venv/bin/python benchmarks/tpe_scaling.py tpe --sizes 100,1000,5000 --repeats 5

``orchestration``: trials per second of the real loop (``search.run_search`` + TPE) when a
trial costs nothing, on a LocalCluster: ``dask`` submits a no-op function straight to Dask;
``prefect`` submits a no-op Prefect task through a DaskTaskRunner (as ``taxi-hpo run`` does);
``prefect-mlflow`` also opens and closes one MLflow child run per trial (``--tracking-uri``).

    .venv/bin/python benchmarks/tpe_scaling.py orchestration --trials 200 --workers 2 \\
        --layers dask,prefect,prefect-mlflow --tracking-uri http://127.0.0.1:5000

Prints one JSON object per measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import numpy as np

from taxi_hpo.search import TPESearcher, TrialOutcome, reference_space, run_search


def synthetic_loss(params: dict) -> float:
    """A smooth bowl over the space with its minimum inside it: TPE has something to model."""
    return (
        6.3
        + (math.log(params["learning_rate"]) + 1.5) ** 2
        + 0.01 * (params["max_depth"] - 20) ** 2
        + 0.1 * math.log(params["min_child_weight"] + 1)
    )


def random_point(rng: np.random.Generator, max_depth: int) -> dict:
    return {
        "max_depth": int(rng.integers(4, max_depth + 1)),
        "learning_rate": math.exp(rng.uniform(-3, 0)),
        "reg_alpha": math.exp(rng.uniform(-5, -1)),
        "reg_lambda": math.exp(rng.uniform(-6, -1)),
        "min_child_weight": math.exp(rng.uniform(-1, 3)),
    }


# -- TPE ---------------------------------------------------------------------------------------


def tpe_at(size: int, repeats: int, seed: int = 0, max_depth: int = 100) -> dict:
    """Median ask and tell times (ms) with ``size`` finished trials in the history."""
    searcher = TPESearcher(reference_space(max_depth), seed)
    rng = np.random.default_rng(seed)
    fill_start = time.perf_counter()
    for trial_id in range(size):  # random history, as add_finished inserts on resume
        point = random_point(rng, max_depth)
        searcher.add_finished(trial_id, point, synthetic_loss(point))
    fill_s = time.perf_counter() - fill_start
    asks, tells = [], []
    for trial_id in range(size, size + repeats):
        t0 = time.perf_counter()
        params = searcher.suggest(trial_id)
        t1 = time.perf_counter()
        searcher.record(trial_id, synthetic_loss(params))
        asks.append((t1 - t0) * 1000)
        tells.append((time.perf_counter() - t1) * 1000)
    return {
        "bench": "tpe",
        "history": size,
        "ask_ms": round(statistics.median(asks), 2),
        "tell_ms": round(statistics.median(tells), 2),
        "ask_max_ms": round(max(asks), 2),
        "asks_per_s": round(1000 / statistics.median(asks), 1),
        "fill_s": round(fill_s, 1),
    }


# -- orchestration -----------------------------------------------------------------------------


class DaskNoopRunner:
    """Trials as a no-op function submitted straight to Dask."""

    def __init__(self, client):
        self._client, self._futures, self._params = client, {}, {}

    def submit(self, trial_id, params, priority):
        self._futures[trial_id] = self._client.submit(_noop, trial_id, pure=False)
        self._params[trial_id] = params
        return trial_id

    def wait_any(self, handles):
        import distributed

        distributed.wait([self._futures[h] for h in handles], return_when="FIRST_COMPLETED")
        return [h for h in handles if self._futures[h].done()]

    def outcome(self, handle):
        self._futures.pop(handle).result()
        params = self._params.pop(handle)
        return TrialOutcome(handle, params, synthetic_loss(params))


class PrefectNoopRunner(DaskNoopRunner):
    """Trials as a no-op Prefect task on the flow's DaskTaskRunner, as ``dask_runner.DaskTrialRunner``."""

    def __init__(self, task, ctx=None):
        self._task, self._ctx, self._futures, self._params = task, ctx, {}, {}

    def submit(self, trial_id, params, priority):
        self._futures[trial_id] = self._task.submit(trial_id, self._ctx).wrapped_future
        self._params[trial_id] = params
        return trial_id


def _noop(trial_id: int) -> int:
    return trial_id


def _noop_with_run(trial_id: int, ctx) -> int:
    if ctx is not None:
        from taxi_hpo import tracking

        run_id = tracking.start_child_run(ctx, f"noop-{trial_id:05d}", {tracking.TRIAL_TAG: str(trial_id)})
        tracking.finish_child_run(ctx, run_id, {"trial": trial_id}, {"rmse_valid": 1.0})
    return trial_id


def orchestration(layer: str, trials: int, workers: int, tracking_uri: str | None) -> dict:
    import distributed

    searcher = TPESearcher(reference_space(100), 0, max(20, workers))
    if layer == "dask":
        with (
            distributed.LocalCluster(
                n_workers=workers, threads_per_worker=1, dashboard_address=":0", silence_logs=40
            ) as cluster,
            distributed.Client(cluster) as client,
        ):
            start = time.perf_counter()
            run_search(searcher, DaskNoopRunner(client), trials, in_flight=workers)
            wall = time.perf_counter() - start
    else:
        wall = _prefect_search(searcher, trials, workers, tracking_uri if layer == "prefect-mlflow" else None)
    return {
        "bench": "orchestration",
        "layer": layer,
        "trials": trials,
        "slots": workers,
        "wall_s": round(wall, 2),
        "trials_per_s": round(trials / wall, 1),
    }


def _prefect_search(searcher, trials: int, workers: int, tracking_uri: str | None) -> float:
    import distributed
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect_dask import DaskTaskRunner

    from taxi_hpo.prefect_api import prefect_api

    noop = task(name="noop-trial", cache_policy=NO_CACHE)(_noop_with_run)
    runner = DaskTaskRunner(
        cluster_class=distributed.LocalCluster,
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": 1,
            "dashboard_address": ":0",
            "silence_logs": 40,
        },
    )

    @flow(name="orchestration-ceiling", task_runner=runner)
    def ceiling() -> float:
        from prefect.context import FlowRunContext

        ctx = None
        if tracking_uri:
            from taxi_hpo import tracking

            experiment_id = tracking.prepare_store(tracking_uri, "orchestration-ceiling")
            parent = tracking.start_parent_run(tracking_uri, experiment_id, {}, {})
            ctx = tracking.TrackingContext(tracking_uri, experiment_id, parent)
        client = FlowRunContext.get().task_runner.client
        start = time.perf_counter()
        with client.as_current():
            run_search(searcher, PrefectNoopRunner(noop, ctx), trials, in_flight=workers)
        return time.perf_counter() - start

    with prefect_api():
        return ceiling()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="bench", required=True)
    t = sub.add_parser("tpe")
    t.add_argument("--sizes", default="100,1000,5000")
    t.add_argument("--repeats", type=int, default=5)
    o = sub.add_parser("orchestration")
    o.add_argument("--trials", type=int, default=200)
    o.add_argument("--workers", type=int, default=2)
    o.add_argument("--layers", default="dask,prefect")
    o.add_argument("--tracking-uri", default=None)
    args = parser.parse_args(argv)
    print(json.dumps({"machine": f"{os.cpu_count()} cores", "python": sys.version.split()[0]}), flush=True)
    if args.bench == "tpe":
        for size in (int(s) for s in args.sizes.split(",")):
            print(json.dumps(tpe_at(size, args.repeats)), flush=True)
    else:
        for layer in args.layers.split(","):
            if layer == "prefect-mlflow" and not args.tracking_uri:
                parser.error("prefect-mlflow needs --tracking-uri")
            print(json.dumps(orchestration(layer, args.trials, args.workers, args.tracking_uri)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
