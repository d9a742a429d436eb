"""``taxi-hpo``: parse flags, validate, run the flow, print a summary or JSON."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import warnings

from taxi_hpo.errors import DISK_ERRNOS, TaxiHpoError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        sys.stderr.write(f"taxi-hpo: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(EXIT_USAGE)


def _add_search_flags(p: argparse.ArgumentParser) -> None:
    from taxi_hpo.config import default_data_dir

    p.add_argument("--train", default="2021-01", help="training month YYYY-MM or parquet path (default 2021-01)")
    p.add_argument("--valid", default="2021-02", help="validation month YYYY-MM or parquet path (default 2021-02)")
    p.add_argument("--data-dir", default=default_data_dir(),
                   help="folder of green_tripdata_YYYY-MM.parquet files; missing months are downloaded "
                        "into it (env TAXI_HPO_DATA_DIR, default ./data)")
    p.add_argument("--rounds", type=int, default=100, help="XGBoost boosting rounds (default 100)")
    p.add_argument("--max-depth", type=int, default=100, help="upper bound of the max_depth range (default 100)")
    p.add_argument("--seed", type=int, default=42, help="TPE seed (default 42)")


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by `run` and `serve`: the search's size, cluster, tracking and registry."""
    from taxi_hpo.config import default_workers

    p.add_argument("--no-register", action="store_true", help="do not register the best model")
    p.add_argument("--no-report", action="store_true",
                   help="no report (pictures and an HTML page under report/ on the parent run) at the end")
    p.add_argument("--trials", type=int, default=20, help="number of TPE trials (default 20)")
    p.add_argument("--workers", type=int, default=None,
                   help="local Dask worker processes (default: usable cores / --threads-per-worker, "
                        f"{default_workers(1)} here with 1 thread)")
    p.add_argument("--threads-per-worker", type=int, default=1,
                   help="XGBoost threads a trial starts with when every slot is busy (default 1)")
    p.add_argument("--elastic-threads", action=argparse.BooleanOptionalAction, default=True,
                   help="idle cores go to running trials between boosting rounds, and back when a trial "
                        "starts (default on; --no-elastic-threads: exactly --threads-per-worker)")
    p.add_argument("--address", default=None, help="existing Dask scheduler, tcp://host:8786 or tls://host:8786 (TLS certificates from "
                        "DASK_CONFIG; see cluster/README.md)")
    p.add_argument("--cluster-class", default=None, metavar="DOTTED.PATH",
                   help="a Dask cluster manager to create for the search, as prefect-dask's cluster_class: "
                        "dask_jobqueue.SLURMCluster, dask_kubernetes.operator.KubeCluster, coiled.Cluster, "
                        "distributed.LocalCluster, ... (see cluster/README.md)")
    p.add_argument("--cluster-kwargs", default=None, metavar="JSON|FILE",
                   help="keyword arguments of --cluster-class: a JSON object, or a .json/.yaml file")
    p.add_argument("--adapt", default=None, metavar="MIN:MAX",
                   help="with --cluster-class: cluster.adapt(minimum=MIN, maximum=MAX); the search keeps trials "
                        "queued for up to MAX workers, and idle workers go at the tail")
    p.add_argument("--mode", choices=["async", "batch"], default="async",
                     help="async: refill each free slot at once (default); batch: synchronous, reproducible batches")
    p.add_argument("--batch-size", type=int, default=None, help="trials per batch in batch mode (default: slots)")
    p.add_argument("--timeout", default=None, metavar="DURATION",
                   help="time budget of the search (90s, 30m, 2h): no trial starts after it; running ones "
                        "finish, and --resume runs the rest")
    p.add_argument("--timeout-kill", action="store_true",
                   help="with --timeout: stop the running trials too (their runs end KILLED; --resume reruns them)")
    p.add_argument("--warm-start", metavar="PARENT_RUN_ID|latest", default=None,
                   help="first evaluate the best points of an earlier search of the experiment (its parent run "
                        "id, or latest): a monthly retrain starts where last month's search ended")
    p.add_argument("--warm-start-trials", type=int, default=5, help="how many of its best points (default 5)")
    p.add_argument("--prune", choices=["none", "median", "asha"], default="none",
                   help="stop a trial at a checkpoint round when its validation RMSE is worse than the finished "
                        "trials' median (median) or outside their best third (asha) there; default none")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default sqlite:///$PWD/mlflow.db)")
    p.add_argument("--experiment", default="nyc-taxi-hpo", help="MLflow experiment (default nyc-taxi-hpo)")
    p.add_argument("--max-rmse", type=float, default=6.5, help="register only below this RMSE (default 6.5)")
    p.add_argument("--max-inference-time", type=float, default=20e-6,
                     help="register only below this many seconds per row (default 20e-6)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="taxi-hpo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run a parallel TPE search")
    _add_search_flags(run)
    _add_run_flags(run)
    run.add_argument("--resume", metavar="PARENT_RUN_ID", default=None,
                     help="finish an interrupted search: rebuild its TPE history from the tracking store, "
                          "run only the missing trials")
    run.add_argument("--json", action="store_true", help="print one JSON object on stdout at the end")
    from taxi_hpo import bench, plan, serve

    bench.add_parser(sub, _add_search_flags)
    plan.add_parser(sub)
    report = sub.add_parser("report", help="the report of an earlier search, on its parent run (and in --out)",
                            description="Pictures (best so far against time and trials, RMSE against each "
                                        "hyperparameter, the workers' timeline) and one HTML page, logged under "
                                        "report/ on the search's parent run, where the MLflow UI shows them.")
    report.add_argument("parent_run_id", metavar="PARENT_RUN_ID", help="the search's parent run (or latest)")
    report.add_argument("--out", default=None, help="also write the files into this folder")
    report.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default sqlite:///$PWD/mlflow.db)")
    report.add_argument("--experiment", default="nyc-taxi-hpo", help="for `latest` (default nyc-taxi-hpo)")
    serve.add_parser(sub, _add_search_flags, _add_run_flags)
    return parser


def _not_our_error(record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, TaxiHpoError) or _disk_error(exc) is not None:
        return False
    # "Task run ... Finished in state Failed('... OSError: [Errno 28] ...')": said in our line.
    return exc is not None or not any(f"[Errno {n}]" in str(record.msg) for n in DISK_ERRNOS)


def _quiet_libraries() -> None:
    # Quiet terminal, full record: Prefect's console shows warnings only, while flow and task
    # logs (INFO) still go to the Prefect API, from local and remote workers alike.
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    # MLflow prints "View run ... at" to standard output for every run it ends on a tracking server.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    logging.getLogger("distributed").setLevel(logging.ERROR)
    # ... also once distributed is imported: it sets its loggers from the dask config then.
    import dask.config

    dask.config.set({"logging.distributed": "error"})
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    from taxi_hpo.prefect_api import quiet_drain_warnings

    quiet_drain_warnings()
    # Our own errors raised inside the flow (a created cluster's workers failing the checks) are
    # the one line this command prints; Prefect would log each with a traceback first.
    for name in ("prefect.flow_runs", "prefect.task_runs", "prefect.engine"):
        logging.getLogger(name).addFilter(_not_our_error)
    warnings.filterwarnings("ignore", message=".*type hints to the `predict` method.*")


def cluster_flags(args: argparse.Namespace) -> dict:
    """``--cluster-class``, ``--cluster-kwargs``, ``--adapt`` as RunConfig fields (parsed, one line
    on error)."""
    from taxi_hpo.config import parse_adapt, parse_cluster_kwargs
    from taxi_hpo.errors import ConfigError

    if args.cluster_kwargs is not None and not args.cluster_class:
        raise ConfigError("--cluster-kwargs needs --cluster-class (the class they are passed to)")
    return {"cluster_class": args.cluster_class,
            "cluster_kwargs": parse_cluster_kwargs(args.cluster_kwargs) if args.cluster_kwargs else {},
            "adapt": parse_adapt(args.adapt) if args.adapt else None}


def cmd_run(args: argparse.Namespace) -> int:
    from taxi_hpo import prefect_api
    from taxi_hpo.config import RunConfig, parse_duration

    cfg = RunConfig(
        train=args.train, valid=args.valid, data_dir=args.data_dir, trials=args.trials,
        workers=args.workers, threads_per_worker=args.threads_per_worker,
        elastic_threads=args.elastic_threads, address=args.address, **cluster_flags(args),
        mode=args.mode, batch_size=args.batch_size, prune=args.prune, seed=args.seed, rounds=args.rounds,
        timeout_s=parse_duration(args.timeout) if args.timeout else None, timeout_kill=args.timeout_kill,
        warm_start=args.warm_start, warm_start_trials=args.warm_start_trials,
        max_depth=args.max_depth, tracking_uri=args.tracking_uri, experiment=args.experiment,
        max_rmse=args.max_rmse, max_inference_time=args.max_inference_time,
        register=not args.no_register, report=not args.no_report, resume=args.resume,
    )
    # The API server takes seconds to start: launched before the heavy imports and the checks.
    prefect_api.start_early()
    from taxi_hpo import preflight, tracking
    from taxi_hpo.progress import ProgressBar, download_progress

    if cfg.resume:
        from taxi_hpo.preflight import remote
        from taxi_hpo.config import default_data_dir

        # Read before the checks: a server that refuses us must say so, not "no search run".
        tracking.check_reachable(cfg.resolved_tracking_uri)
        remote.check_credentials(cfg.resolved_tracking_uri, None)
        record = tracking.load_search(cfg.resolved_tracking_uri, cfg.resume)  # one read for both
        cfg = preflight.resume_config(cfg, record, data_dir_given=args.data_dir != default_data_dir())
        done = preflight.complete_search(cfg, record)
        if done is not None:  # nothing to run twice: say so, exit 0
            best = f"; best RMSE {done['best_rmse']:.4f}" if done["best_rmse"] is not None else ""
            sys.stderr.write(f"taxi-hpo: search {done['parent_run_id']} is already complete ({done['trials']} of "
                             f"{done['trials']} trials ended{best}): nothing to run\n")
            if args.json:
                print(json.dumps(done))
            return 0
    preflight.check(cfg, download_progress())
    from taxi_hpo import flows

    if args.json:
        with _stdout_to_stderr():
            summary = flows.execute(cfg, ProgressBar())
        print(json.dumps(summary, default=str))
    else:
        _print_summary(flows.execute(cfg, ProgressBar()))
    return 0


@contextlib.contextmanager
def _stdout_to_stderr():
    """Under ``--json`` standard output holds the JSON object alone: whatever the run prints
    (MLflow's "View run" lines with a tracking server, a library's chatter), in this process or
    in the local workers it starts, goes to standard error until the object is printed."""
    sys.stdout.flush()
    saved_fd, saved = os.dup(1), sys.stdout
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved_fd, 1)
        os.close(saved_fd)
        sys.stdout = saved


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from taxi_hpo import report, tracking
    from taxi_hpo.config import RunConfig
    from taxi_hpo.errors import TrackingError

    uri = RunConfig(tracking_uri=args.tracking_uri).resolved_tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise TrackingError(f"no tracking store at {uri}: pass the --tracking-uri the search used")
    tracking.check_reachable(uri)
    from taxi_hpo.preflight import remote

    remote.check_credentials(uri, None)  # a server that asks for a password: one line
    run_id = args.parent_run_id
    if run_id == "latest":
        experiment_id = tracking.experiment_id_by_name(uri, args.experiment)
        run_id = experiment_id and tracking.latest_search(uri, experiment_id)
        if not run_id:
            raise TrackingError(f"no search with a finished trial in experiment {args.experiment!r} of {uri}")
    files = report.publish(uri, run_id, Path(args.out) if args.out else None)
    print(f"report logged under {report.ARTIFACT_DIR}/ on run {run_id} ({uri})"
          + (f"; files in {Path(args.out).resolve()}: " + ", ".join(f.name for f in files) if files else ""))
    return 0


def _print_summary(s: dict) -> None:
    best = f"{s['best_rmse']:.4f}" if s["best_rmse"] is not None else "none"
    print(f"LinearRegression RMSE {s['lr_rmse']:.4f}; best XGBoost RMSE {best} "
          f"({s['trials_done']} done, {s['trials_pruned']} of them pruned, {s['trials_failed']} failed) "
          f"in {s['search_wall_s']:.1f} s, "
          f"utilisation {s['utilisation']}")
    if s.get("ended_on_timeout"):
        print(f"the time budget ran out: {s['trials_cancelled']} trial(s) stopped, {s['trials_not_started']} not "
              f"started; `taxi-hpo run --resume {s['parent_run_id']}` runs them")
    print(f"MLflow: {s['tracking_uri']} parent run {s['parent_run_id']}"
          + (f", report in its artifacts ({s['report']})" if s.get("report") else ""))
    if s.get("mlflow_ui"):
        print(f"MLflow UI: {s['mlflow_ui']}")
    if s["registered_version"]:
        print(f"registered nyc-taxi-duration version {s['registered_version']} as @staging")
    else:
        print("no trial met the registration thresholds: nothing registered")


def _interrupted_exit() -> int:
    sys.stderr.write("taxi-hpo: interrupted; the search's parent run is marked KILLED: "
                     "finish it with `taxi-hpo run --resume PARENT_RUN_ID`\n")
    return 130


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "bench":
            from taxi_hpo import bench
            return bench.main(args)
        if args.command == "plan":
            from taxi_hpo import plan
            return plan.main(args)
        if args.command == "report":
            return cmd_report(args)
        if args.command == "serve":
            from taxi_hpo import serve
            return serve.main(args)
    except TaxiHpoError as exc:
        sys.stderr.write(f"taxi-hpo: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return _interrupted_exit()
    except Exception as exc:
        flows = sys.modules.get("taxi_hpo.flows")
        if flows is not None and flows.interrupted():  # Ctrl-C surfaced as another exception
            return _interrupted_exit()
        disk = _disk_error(exc)
        if disk is None:
            raise
        where = f" writing {disk.filename}" if disk.filename else " writing the tracking store or its artifacts"
        sys.stderr.write(f"taxi-hpo: error: {disk.strerror or disk}{where}: free space on that disk (or point "
                         f"--tracking-uri and the artifacts at another one); the runs this search opened are closed "
                         f"FAILED, and `taxi-hpo run --resume PARENT_RUN_ID` goes on once there is room\n")
        return EXIT_USAGE
    return 0


def _disk_error(exc: BaseException | None) -> OSError | None:
    """The full/read-only-disk OSError behind ``exc`` (MLflow and Prefect wrap it), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def entry() -> None:
    """The ``taxi-hpo`` command: :func:`main`, then a quick exit.

    Once ``main`` returns, everything the run started is closed (cluster, API server, MLflow
    runs). What is left is the interpreter tearing down the modules of Prefect, MLflow, Dask and
    XGBoost: measured 1.3 s of the command's wall on 2 cores, for nothing. So the exit handlers
    run and the streams are flushed as on a normal exit, then the process ends.
    """
    import atexit

    code = main()
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed pipe: nothing more to say anyway
                pass
        os._exit(code)


if __name__ == "__main__":
    entry()
