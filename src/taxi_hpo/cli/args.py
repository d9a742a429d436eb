"""The flags of ``taxi-hpo run`` and ``serve`` and the one mapping from them to a :class:`RunConfig`."""

from __future__ import annotations

import argparse
import sys

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (what was wrong, where to read more) instead of the usage dump."""

    def error(self, message: str):
        """Print ``message`` as one line on standard error and exit with status 2
        (:data:`EXIT_USAGE`)."""
        sys.stderr.write(f"taxi-hpo: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(EXIT_USAGE)


def add_search_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by `run`, `serve` and `bench`: the months, the data folder, the rounds, the
    depth bound and the seed."""
    from taxi_hpo.config import default_data_dir

    p.add_argument(
        "--train", default="2021-01", help="training month YYYY-MM or parquet path (default 2021-01)"
    )
    p.add_argument(
        "--valid", default="2021-02", help="validation month YYYY-MM or parquet path (default 2021-02)"
    )
    p.add_argument(
        "--data-dir",
        default=default_data_dir(),
        help="folder of green_tripdata_YYYY-MM.parquet files; missing months are downloaded "
        "into it (env TAXI_HPO_DATA_DIR, default ./data)",
    )
    p.add_argument("--rounds", type=int, default=100, help="XGBoost boosting rounds (default 100)")
    p.add_argument(
        "--max-depth", type=int, default=100, help="upper bound of the max_depth range (default 100)"
    )
    p.add_argument("--seed", type=int, default=42, help="TPE seed (default 42)")


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by `run` and `serve`: the search's size, cluster, tracking and registry."""
    from taxi_hpo.config import default_workers
    from taxi_hpo.search.promotion import FIDELITIES
    from taxi_hpo.search.pruning import RULES as PRUNE_RULES
    from taxi_hpo.search.scheduler import MODES

    # default None: given or not, for --resume (which keeps the search's own, see OUTCOME_FLAGS)
    p.add_argument("--no-register", action="store_true", default=None, help="do not register the best model")
    p.add_argument(
        "--no-report",
        action="store_true",
        default=None,
        help="no report (pictures and an HTML page under report/ on the parent run) at the end",
    )
    p.add_argument("--trials", type=int, default=20, help="number of TPE trials (default 20)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local Dask worker processes (default: usable cores / --threads-per-worker, "
        f"{default_workers(1)} here with 1 thread)",
    )
    p.add_argument(
        "--threads-per-worker",
        type=int,
        default=1,
        help="XGBoost threads a trial starts with when every slot is busy (default 1)",
    )
    p.add_argument(
        "--elastic-threads",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="idle cores go to running trials between boosting rounds, and back when a trial "
        "starts (default on; --no-elastic-threads: exactly --threads-per-worker)",
    )
    p.add_argument(
        "--address",
        default=None,
        help="existing Dask scheduler, tcp://host:8786 or tls://host:8786 (TLS certificates from "
        "DASK_CONFIG; see cluster/README.md)",
    )
    p.add_argument(
        "--cluster-class",
        default=None,
        metavar="DOTTED.PATH",
        help="a Dask cluster manager to create for the search, as prefect-dask's cluster_class: "
        "dask_jobqueue.SLURMCluster, dask_kubernetes.operator.KubeCluster, coiled.Cluster, "
        "distributed.LocalCluster, ... (see cluster/README.md)",
    )
    p.add_argument(
        "--cluster-kwargs",
        default=None,
        metavar="JSON|FILE",
        help="keyword arguments of --cluster-class: a JSON object, or a .json/.yaml file",
    )
    p.add_argument(
        "--adapt",
        default=None,
        metavar="MIN:MAX",
        help="with --cluster-class: cluster.adapt(minimum=MIN, maximum=MAX); the search keeps trials "
        "queued for up to MAX workers, and idle workers go at the tail",
    )
    p.add_argument(
        "--mode",
        choices=MODES,
        default="async",
        help="async: refill each free slot at once (default); batch: synchronous, reproducible batches",
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="trials per batch in batch mode (default: slots)"
    )
    p.add_argument(
        "--timeout",
        default=None,
        metavar="DURATION",
        help="time budget of the search (90s, 30m, 2h): no trial starts after it; running ones "
        "finish, and --resume runs the rest",
    )
    p.add_argument(
        "--timeout-kill",
        action="store_true",
        help="with --timeout: stop the running trials too (their runs end KILLED; --resume reruns them)",
    )
    p.add_argument(
        "--warm-start",
        metavar="PARENT_RUN_ID|latest",
        default=None,
        help="first evaluate the best points of an earlier search of the experiment (its parent run "
        "id, or latest): a monthly retrain starts where last month's search ended",
    )
    p.add_argument("--warm-start-trials", type=int, default=5, help="how many of its best points (default 5)")
    p.add_argument(
        "--prune",
        choices=PRUNE_RULES,
        default="none",
        help="stop a trial at a checkpoint round when its validation RMSE is worse than the finished "
        "trials' median (median) or outside their best third (asha) there; default none",
    )
    p.add_argument(
        "--fidelity",
        choices=FIDELITIES,
        default="none",
        help="screen new points with cheap fits and fit only the best third completely: auto (1/9 of "
        "the training rows at 9 rounds, the ladder docs/benchmarks.md found), rows (1/9 of the rows), "
        "rounds (9 rounds); --trials counts fits at every rung; default none (every fit complete)",
    )
    p.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking URI (default sqlite:///$PWD/mlflow.db)"
    )
    p.add_argument("--experiment", default="nyc-taxi-hpo", help="MLflow experiment (default nyc-taxi-hpo)")
    p.add_argument(
        "--max-rmse",
        type=float,
        default=None,
        help="register only below this RMSE (default 6.5; with --resume, the search's own)",
    )
    p.add_argument(
        "--max-inference-time",
        type=float,
        default=None,
        help="register only below this many seconds per row (default 20e-6; with --resume, the search's own)",
    )


def cluster_flags(args: argparse.Namespace) -> dict:
    """``--cluster-class``, ``--cluster-kwargs``, ``--adapt`` as RunConfig fields (parsed, one line
    on error)."""
    from taxi_hpo.config import parse_adapt, parse_cluster_kwargs
    from taxi_hpo.errors import ConfigError

    if args.cluster_kwargs is not None and not args.cluster_class:
        raise ConfigError("--cluster-kwargs needs --cluster-class (the class they are passed to)")
    return {
        "cluster_class": args.cluster_class,
        "cluster_kwargs": parse_cluster_kwargs(args.cluster_kwargs) if args.cluster_kwargs else {},
        "adapt": parse_adapt(args.adapt) if args.adapt else None,
    }


def run_config(args: argparse.Namespace, **overrides):
    """The :class:`RunConfig` the flags of ``run`` (or ``serve``) describe, validated now."""
    from taxi_hpo.config import RunConfig, parse_duration

    values = dict(
        train=args.train,
        valid=args.valid,
        data_dir=args.data_dir,
        trials=args.trials,
        workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        elastic_threads=args.elastic_threads,
        address=args.address,
        **cluster_flags(args),
        mode=args.mode,
        batch_size=args.batch_size,
        prune=args.prune,
        fidelity=args.fidelity,
        seed=args.seed,
        rounds=args.rounds,
        timeout_s=parse_duration(args.timeout) if args.timeout else None,
        timeout_kill=args.timeout_kill,
        warm_start=args.warm_start,
        warm_start_trials=args.warm_start_trials,
        max_depth=args.max_depth,
        tracking_uri=args.tracking_uri,
        experiment=args.experiment,
        resume=getattr(args, "resume", None),
    )
    outcome = {
        "max_rmse": args.max_rmse,
        "max_inference_time": args.max_inference_time,
        "register": None if args.no_register is None else not args.no_register,
        "report": None if args.no_report is None else not args.no_report,
    }
    # a flag not given leaves RunConfig's default (6.5, 20e-6, register, report)
    values.update({field: value for field, value in outcome.items() if value is not None})
    return RunConfig(**{**values, **overrides})


#: The settings that decide how a search ends, by RunConfig field, and their flags: a resumed
#: search keeps the ones it started with unless the flag is given with --resume.
OUTCOME_FLAGS = {
    "max_rmse": "max_rmse",
    "max_inference_time": "max_inference_time",
    "register": "no_register",
    "report": "no_report",
}


def outcome_flags_given(args: argparse.Namespace) -> frozenset[str]:
    """The :data:`OUTCOME_FLAGS` fields whose flag the command line gave."""
    return frozenset(field for field, dest in OUTCOME_FLAGS.items() if getattr(args, dest) is not None)
