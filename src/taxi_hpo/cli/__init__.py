"""The ``taxi-hpo`` command: parse the flags, check the inputs, run the flow, print a summary or JSON.

The parser's description (:data:`DESCRIPTION`) is what ``taxi-hpo --help`` opens with; the flags
and their mapping to a :class:`~taxi_hpo.config.RunConfig` live in :mod:`taxi_hpo.cli.args`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import warnings

import taxi_hpo
from taxi_hpo.cli.args import (
    EXIT_USAGE,
    Parser,
    add_run_flags,
    add_search_flags,
    outcome_flags_given,
    run_config,
)
from taxi_hpo.errors import DISK_ERRNOS, SQLITE_FULL, TaxiHpoError, disk_error

DESCRIPTION = """\
Tune the NYC-taxi trip-duration model (hyperopt TPE over XGBoost, the MLOps-Zoomcamp pipeline)
in parallel on a Dask cluster: your laptop's cores, a remote scheduler, or a cluster it creates.
Every trial is an MLflow run and a Prefect task; the best model is registered as @staging.

  taxi-hpo run                 a search on this machine (months downloaded and cached)
  taxi-hpo run --address URL   the same on a running Dask scheduler
  taxi-hpo report latest       the report of the last search, in the MLflow UI
  taxi-hpo bench / plan        measure layouts here / predict them on a bigger machine
  taxi-hpo serve --cron ...    the search as a scheduled Prefect deployment
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``taxi-hpo`` parser: ``--version`` and the commands run, bench, plan, report and
    serve."""
    parser = Parser(
        prog="taxi-hpo", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"taxi-hpo {taxi_hpo.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    run = sub.add_parser("run", help="run a parallel TPE search")
    add_search_flags(run)
    add_run_flags(run)
    run.add_argument(
        "--resume",
        metavar="PARENT_RUN_ID",
        default=None,
        help="finish an interrupted search: rebuild its TPE history from the tracking store, "
        "run only the missing trials",
    )
    run.add_argument("--json", action="store_true", help="print one JSON object on stdout at the end")
    from taxi_hpo import bench, plan, serve

    bench.add_parser(sub, add_search_flags)
    plan.add_parser(sub)
    report = sub.add_parser(
        "report",
        help="the report of an earlier search, on its parent run (and in --out)",
        description="Pictures (best so far against time and trials, RMSE against each "
        "hyperparameter, the workers' timeline) and one HTML page, logged under "
        "report/ on the search's parent run, where the MLflow UI shows them.",
    )
    report.add_argument("parent_run_id", metavar="PARENT_RUN_ID", help="the search's parent run (or latest)")
    report.add_argument("--out", default=None, help="also write the files into this folder")
    report.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking URI (default sqlite:///$PWD/mlflow.db)"
    )
    report.add_argument("--experiment", default="nyc-taxi-hpo", help="for `latest` (default nyc-taxi-hpo)")
    serve.add_parser(sub, add_search_flags, add_run_flags)
    return parser


def _not_our_error(record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, TaxiHpoError) or disk_error(exc) is not None:
        return False
    # "Task run ... Finished in state Failed('... OSError: [Errno 28] ...')": said in our line.
    said = str(record.msg)
    return exc is not None or not (any(f"[Errno {n}]" in said for n in DISK_ERRNOS) or SQLITE_FULL in said)


def _quiet_libraries() -> None:
    # Quiet terminal, full record: Prefect's console shows warnings only, while flow and task
    # logs (INFO) still go to the Prefect API, from local and remote workers alike.
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    # MLflow prints "View run ... at" to standard output for every run it ends on a tracking server.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    from taxi_hpo import cluster

    cluster.quiet_logs()
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    from taxi_hpo.prefect_api import quiet_drain_warnings

    quiet_drain_warnings()
    # Our own errors raised inside the flow (a created cluster's workers failing the checks) are
    # the one line this command prints; Prefect would log each with a traceback first.
    # MLflow's sqlite store logs a full disk ("database or disk is full") with a traceback too.
    for name in ("prefect.flow_runs", "prefect.task_runs", "prefect.engine", "mlflow.store.db.utils"):
        logging.getLogger(name).addFilter(_not_our_error)
    warnings.filterwarnings("ignore", message=".*type hints to the `predict` method.*")


def cmd_run(args: argparse.Namespace, whole_process: bool = False) -> int:
    """``taxi-hpo run``: check the inputs, run the search and print its summary (``--json``: one
    JSON object on standard output); exit status 0.

    ``whole_process``: this process is the command (:func:`entry`), so local workers may be
    forked from a server started now (:mod:`taxi_hpo.cluster.forkserver`).

    With ``--resume``, the search's settings come from its parent run; a search that is already
    complete runs nothing and says so.
    """
    from taxi_hpo import timeline

    timeline.reset()  # this command's steps only (a process may run several, as the tests do)
    cfg = run_config(args)
    if not cfg.resume:  # a --train/--valid that names no file: one line before anything starts
        from taxi_hpo.core import data

        for spec in (cfg.train, cfg.valid):
            data.locate(spec, cfg.data_dir)
    if whole_process:  # the temporary API server first, before this process imports Prefect
        from taxi_hpo import prefect_server

        prefect_server.launch_unless_configured()
    _quiet_libraries()
    from taxi_hpo import prefect_api

    # The API server takes seconds to start: launched before the heavy imports and the checks;
    # so is the fork server of the workers this process starts, its LocalCluster's or a created
    # one's (the command's own process only: a caller of main() keeps its environment its own,
    # see cluster.forkserver).
    api_url = prefect_api.start_early()
    if whole_process and cfg.local_worker_processes:
        from taxi_hpo.flows import warm

        # its forks, the workers, keep its standard output: under --json, standard error
        with _stdout_to_stderr() if args.json else contextlib.nullcontext():
            warm.start_fork_server(api_url, cfg.threads_per_worker, cfg.resolved_tracking_uri)
    from taxi_hpo import preflight, tracking
    from taxi_hpo.cli.progress import ProgressBar, download_progress

    if cfg.resume:
        from taxi_hpo.config import default_data_dir
        from taxi_hpo.preflight import remote

        # Read before the checks: a server that refuses us must say so, not "no search run".
        tracking.check_reachable(cfg.resolved_tracking_uri)
        remote.check_credentials(cfg.resolved_tracking_uri, None)
        record = tracking.load_search(cfg.resolved_tracking_uri, cfg.resume)  # one read for both
        given = outcome_flags_given(args)
        cfg = preflight.resume_config(
            cfg, record, data_dir_given=args.data_dir != default_data_dir(), given=given
        )
        done = preflight.complete_search(cfg, record)
        if done is not None:  # nothing to run twice: say so, exit 0
            best = f"; best RMSE {done['best_rmse']:.4f}" if done["best_rmse"] is not None else ""
            sys.stderr.write(
                f"taxi-hpo: search {done['parent_run_id']} is already complete ({done['trials']} of "
                f"{done['trials']} trials ended{best}): nothing to run\n"
            )
            if args.json:
                print(json.dumps(done))
            return 0
        sys.stderr.write(preflight.resume_line(cfg, record, given) + "\n")
    timeline.mark("cli_imports_done")
    preflight.check(cfg, download_progress())
    timeline.mark("checks_done")
    from taxi_hpo import flows

    if args.json:
        with _stdout_to_stderr():
            summary = flows.execute(cfg, ProgressBar())
    else:
        summary = flows.execute(cfg, ProgressBar())
    timeline.mark("closed")  # the cluster and the API server this run started are gone
    summary["timeline"] = timeline.timeline()
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        _print_summary(summary)
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
    """``taxi-hpo report``: make the report of the search ``args.parent_run_id`` and log it on its
    parent run (``--out``: also into that folder); exit status 0.

    ``latest`` stands for the newest search with a finished trial in ``--experiment``. Raises
    TrackingError when there is no store at the URI or no such search.
    """
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
    print(
        f"report logged under {report.ARTIFACT_DIR}/ on run {run_id} ({uri})"
        + (f"; files in {Path(args.out).resolve()}: " + ", ".join(f.name for f in files) if files else "")
    )
    return 0


def _print_summary(s: dict) -> None:
    best = f"{s['best_rmse']:.4f}" if s["best_rmse"] is not None else "none"
    if s.get("ladder"):  # a multi-fidelity search: how many fits each rung made
        screened = ", ".join(
            f"{r['fits']} at rung {r['rung']} ({r['rows']:.3g} of the rows, {r['rounds'] or 'all'} rounds)"
            for r in s["ladder"]
        )
        kinds = f"{s['trials_done']} done: {screened}"
    else:
        kinds = f"{s['trials_done']} done, {s['trials_pruned']} of them pruned"
    print(
        f"LinearRegression RMSE {s['lr_rmse']:.4f}; best XGBoost RMSE {best} "
        f"({kinds}, {s['trials_failed']} failed) "
        f"in {s['search_wall_s']:.1f} s, "
        f"utilisation {s['utilisation']}"
    )
    if s.get("ended_on_timeout"):
        print(
            f"the time budget ran out: {s['trials_cancelled']} trial(s) stopped, "
            f"{s['trials_not_started']} not "
            f"started; `taxi-hpo run --resume {s['parent_run_id']}` runs them"
        )
    print(
        f"MLflow: {s['tracking_uri']} parent run {s['parent_run_id']}"
        + (f", report in its artifacts ({s['report']})" if s.get("report") else "")
    )
    if s.get("mlflow_ui"):
        print(f"MLflow UI: {s['mlflow_ui']}")
    if s["registered_version"]:
        print(f"registered nyc-taxi-duration version {s['registered_version']} as @staging")
    else:
        print("no trial met the registration thresholds: nothing registered")


def _interrupted_exit() -> int:
    sys.stderr.write(
        "taxi-hpo: interrupted; the search's parent run is marked KILLED: "
        "finish it with `taxi-hpo run --resume PARENT_RUN_ID`\n"
    )
    return 130


def main(argv: list[str] | None = None, whole_process: bool = False) -> int:
    """Run the ``taxi-hpo`` command line ``argv`` (default: ``sys.argv[1:]``); returns the exit
    status.

    Our own errors and a full or read-only disk are one line on standard error (status 2), Ctrl-C is
    status 130; any other exception is raised. ``whole_process``: this process is the command
    and ends with it (see :func:`cmd_run`).
    """
    args = build_parser().parse_args(argv)
    if args.command != "run":  # run quiets them after launching what must start first
        _quiet_libraries()
    try:
        if args.command == "run":
            return cmd_run(args, whole_process)
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

            return serve.main(args, serve.deployment_config(run_config(args)))
    except TaxiHpoError as exc:
        sys.stderr.write(f"taxi-hpo: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return _interrupted_exit()
    except Exception as exc:
        flows = sys.modules.get("taxi_hpo.flows")
        if flows is not None and flows.interrupted():  # Ctrl-C surfaced as another exception
            return _interrupted_exit()
        disk = disk_error(exc)
        if disk is None:
            raise
        where = (
            f" writing {disk.filename}" if disk.filename else " writing the tracking store or its artifacts"
        )
        sys.stderr.write(
            f"taxi-hpo: error: {disk.strerror or disk}{where}: free space on that disk (or point "
            f"--tracking-uri and the artifacts at another one); the runs this search opened are closed "
            f"FAILED, and `taxi-hpo run --resume PARENT_RUN_ID` goes on once there is room\n"
        )
        return EXIT_USAGE
    return 0


def entry() -> None:
    """The ``taxi-hpo`` command: :func:`main`, then a quick exit.

    Once ``main`` returns, everything the run started is closed (cluster, API server, MLflow
    runs). What is left is the interpreter tearing down the modules of Prefect, MLflow, Dask and
    XGBoost: measured 1.3 s of the command's wall on 2 cores, for nothing. So the exit handlers
    run and the streams are flushed as on a normal exit, then the process ends.
    """
    import atexit

    code = main(whole_process=True)
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed pipe: nothing more to say anyway
                pass
        os._exit(code)
