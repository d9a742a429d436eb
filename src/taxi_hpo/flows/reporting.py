"""What a search tells as it goes and when it ends: the progress sink and the report.

The progress sink (:class:`Reporter`, the CLI's progress bar) is handed to :func:`execute
<taxi_hpo.flows.execute>` and reaches the flow through a ContextVar. The report (pictures and a
page on the parent run) is drawn in a thread of its own while the workers flush and the best
model registers.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar
from typing import Protocol

from prefect import get_run_logger

from taxi_hpo import timeline
from taxi_hpo.config import RunConfig
from taxi_hpo.flows.summary import TrialsRun
from taxi_hpo.search import TrialOutcome
from taxi_hpo.search.threads import ThreadPlan


class Reporter(Protocol):
    """Progress sink of a search (the CLI's progress bar); called from the flow process."""

    def start(self, total: int, dashboard: str | None, layout: str) -> None:
        """The search starts: ``total`` trials, the Dask dashboard's link, the layout line."""

    def update(self, outcome: TrialOutcome) -> None:
        """A trial ended (in the scheduler's order)."""

    def stop(self) -> None:
        """The search ended (called again on the way out; must be idempotent)."""


_REPORTER: ContextVar[Reporter | None] = ContextVar("taxi_hpo_reporter", default=None)


def current_reporter() -> Reporter | None:
    """The sink of the search running in this context, or None.

    Flows reach the ContextVar through this function: Prefect pickles the flow's function by
    value into every task's context, and a ContextVar global would make that fail.
    """
    return _REPORTER.get()


@contextlib.contextmanager
def reporting_to(reporter: Reporter | None) -> Iterator[None]:
    """Searches run in the block report their progress to ``reporter``."""
    token = _REPORTER.set(reporter)
    try:
        yield
    finally:
        _REPORTER.reset(token)


def layout_line(cfg: RunConfig, workers: int, slots: int, plan: ThreadPlan) -> str:
    """One line saying where trials run and on how many threads (the progress bar's header)."""
    if cfg.address:
        where = f"scheduler {cfg.address}"
    elif cfg.cluster_class and cfg.adapt:
        where = f"{cfg.cluster_class}, adapting between {cfg.adapt[0]} and {cfg.adapt[1]} workers"
    elif cfg.cluster_class:
        where = cfg.cluster_class
    else:
        where = "local cluster"
    if cfg.mode == "async" and (cfg.address or cfg.cluster_class) and not cfg.adapt:
        where += "; more as workers join"
    base = cfg.threads_per_worker
    line = (
        f"{workers} worker{'s' * (workers != 1)} x {base} XGBoost thread{'s' * (base != 1)}, "
        f"{slots} trial{'s' * (slots != 1)} at a time ({where})"
    )
    if plan.elastic:
        most = max(plan.pool_cores.values(), default=base)
        line += f"; elastic threads: a trial takes idle cores, up to {most}"
    if cfg.default_layout and plan.elastic and base == 1:
        line += (
            f" (the default for {cfg.workers} usable core{'s' * (cfg.workers != 1)}: a trial per core, "
            "no thread waiting on another; a freed core goes to the trials still running)"
        )
    return line


def prepare_report(cfg: RunConfig) -> None:
    """When the search draws a report: import what drawing it needs, in a thread, while the
    search's trials run (the flow process mostly waits on them)."""
    if not cfg.report:
        return
    from taxi_hpo import report

    threading.Thread(target=report.import_drawing, name="taxi-hpo-report-imports", daemon=True).start()


def start_report(tracking_uri: str, parent_run_id: str, run: TrialsRun, lr_rmse: float) -> Future:
    """The search's report on its parent run (``report/``), made in a thread of its own, with
    the trials' ends as the search saw them (a busy tracking server may not show them yet)."""
    from taxi_hpo import report  # matplotlib: imported when a report is drawn

    ended = {
        o.run_id: report.ended_as(
            o.loss, o.pruned_at, o.cancelled, o.finished, o.fidelity.get("complete", True)
        )
        for o in run.outcomes
        if o.run_id
    }
    metrics = {"lr_rmse": lr_rmse, "search_wall_s": run.search_wall_s, "utilisation": run.utilisation}
    pool = ThreadPoolExecutor(1, thread_name_prefix="taxi-hpo-report")
    timeline.mark("report_started")
    job = pool.submit(
        report.publish, tracking_uri, parent_run_id, metrics=metrics, status="FINISHED", ended=ended
    )
    pool.shutdown(wait=False)
    return job


def finish_report(job: Future, parent_run_id: str) -> str | None:
    """Where the report is, once made; one that could not be made is a warning, never a failed
    search."""
    from taxi_hpo import report

    try:
        job.result()
    except Exception as exc:  # noqa: BLE001 - the search itself succeeded
        get_run_logger().warning(
            "no report for this search (%s: %s); `taxi-hpo report %s` tries again",
            type(exc).__name__,
            exc,
            parent_run_id,
        )
        return None
    timeline.mark("report_done")
    return f"{report.ARTIFACT_DIR}/report.html"
