"""``taxi-hpo serve``: the search as a Prefect deployment on a cron schedule.

The deployment runs :func:`scheduled_search`, a thin flow that resolves months given relative to
the run's scheduled date (``prev-N``: N calendar months before it), checks the inputs as
``taxi-hpo run`` does, and runs the search flow (``flows.search``, as a subflow, on the cluster
the flags name). Its one parameter is ``config``: ``RunConfig.to_dict()`` with the months as given.
This process serves it (``Flow.serve``) until stopped; stopping pauses the schedule.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

from taxi_hpo.errors import ConfigError, DataError

FLOW_NAME = "taxi-hpo-scheduled"
RELATIVE_MONTH = re.compile(r"^prev-(\d{1,3})$")


def add_parser(sub, add_search_flags, add_run_flags) -> None:
    """Add ``taxi-hpo serve`` and its flags to the subparsers ``sub``; ``add_search_flags`` and
    ``add_run_flags`` add the flags it shares with ``run``."""
    p = sub.add_parser(
        "serve",
        help="serve the search as a scheduled Prefect deployment",
        description="Serve the search as a Prefect deployment on a cron schedule, until stopped. "
        "--train/--valid also take prev-N: N months before each run's scheduled date.",
    )
    add_search_flags(p)
    p.add_argument("--cron", required=True, help='cron schedule, e.g. "0 3 * * 1" (Mondays 03:00)')
    p.add_argument("--timezone", default="UTC", help="time zone of --cron (default UTC)")
    p.add_argument("--name", default="scheduled", help="deployment name (default scheduled)")
    add_run_flags(p)


# -- months relative to the run date (pure) --------------------------------------------------


def resolve_month(spec: str, when: datetime) -> str:
    """``prev-N`` -> the month N months before ``when`` as ``YYYY-MM``; anything else unchanged."""
    match = RELATIVE_MONTH.match(spec)
    if not match:
        return spec
    index = when.year * 12 + when.month - 1 - int(match.group(1))
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def check_month_spec(spec: str, flag: str) -> None:
    """Reject at serve time what would fail every scheduled run."""
    from taxi_hpo.core import data

    if RELATIVE_MONTH.match(spec):
        return
    if spec.endswith(".parquet") or os.sep in spec:
        if not Path(spec).expanduser().is_file():
            raise ConfigError(
                f"{flag} {spec} does not exist: give a month YYYY-MM, prev-N or an existing file"
            )
        return
    try:
        data.month_filename(spec)
    except DataError as exc:
        raise ConfigError(f"{flag} {spec!r} is neither a month YYYY-MM, prev-N nor a parquet file") from exc


# -- the served flow -------------------------------------------------------------------------


def _make_flow():
    from prefect import flow

    @flow(name=FLOW_NAME, description="TPE search of the NYC-taxi XGBoost model on a schedule")
    def scheduled_search(config: dict) -> dict:
        """Resolve relative months for this run's date, check the inputs, run the search."""
        from prefect.runtime import flow_run

        from taxi_hpo import flows, preflight, timeline

        timeline.reset()  # this scheduled run's steps (the serving process runs one after another)
        from taxi_hpo.config import RunConfig

        when = flow_run.scheduled_start_time or datetime.now(UTC)
        cfg = RunConfig.from_dict(
            {
                **config,
                "train": resolve_month(config["train"], when),
                "valid": resolve_month(config["valid"], when),
            }
        )
        preflight.check(cfg)
        return flows.execute(cfg)

    return scheduled_search


def served_flow():
    """The deployment's flow, ``taxi_hpo.serve.scheduled_search``, built on first use.

    Built lazily so that ``taxi-hpo --help`` does not import Prefect.
    """
    if "scheduled_search" not in globals():
        globals()["scheduled_search"] = _make_flow()
    return globals()["scheduled_search"]


def __getattr__(name: str):  # the entrypoint taxi_hpo.serve.scheduled_search resolves here
    if name == "scheduled_search":
        return served_flow()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- the command -----------------------------------------------------------------------------


def deployment_config(cfg) -> dict:
    """The deployment's ``config`` parameter from the command's :class:`RunConfig`, validated now.

    The months stay as given (``prev-N`` is resolved per run); the data folder is made absolute,
    since the served flow runs from wherever Prefect starts it.
    """
    check_month_spec(cfg.train, "--train")
    check_month_spec(cfg.valid, "--valid")
    return {**cfg.to_dict(), "data_dir": str(Path(cfg.data_dir).expanduser().resolve())}


def cron_schedule(cron: str, tz: str):
    """The deployment's schedule; a bad expression or zone is a one-line ConfigError."""
    from prefect.client.schemas.schedules import CronSchedule

    try:
        return CronSchedule(cron=cron, timezone=tz)
    except Exception as exc:  # pydantic's ValidationError: several lines, not for the user
        raise ConfigError(
            f"--cron {cron!r} with --timezone {tz!r} is not a valid schedule: "
            f'give five fields, e.g. "0 3 * * 1", and an IANA zone'
        ) from exc


def main(args: argparse.Namespace, config: dict) -> int:
    """Create (or update) the deployment with ``config`` as its parameter and serve it until interrupted."""
    from prefect.types.entrypoint import EntrypointType

    from taxi_hpo.prefect_api import prefect_api

    schedule = cron_schedule(args.cron, args.timezone)
    with prefect_api() as url:
        sys.stderr.write(
            f"taxi-hpo: serving {FLOW_NAME}/{args.name} on {args.cron!r} ({args.timezone}) "
            f"from {url}; Ctrl-C stops it and pauses the schedule\n"
        )
        # limit=1: a run still going when the next one is due waits, instead of sharing the cluster.
        served_flow().serve(
            name=args.name,
            schedule=schedule,
            parameters={"config": config},
            tags=["taxi-hpo"],
            limit=1,
            print_starting_message=False,
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
    return 0
