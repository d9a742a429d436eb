"""The search's parent run as one context manager: opened (or reopened to resume), and closed
with how the search ended.

``with parent_run(...) as parent:`` is the whole life of a search in the store: its children
still RUNNING at the end (attempts killed with their worker) are marked KILLED, and the parent
ends FINISHED, KILLED (Ctrl-C) or FAILED with the metrics and tags the search left on it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from taxi_hpo.errors import TrackingError
from taxi_hpo.tracking.resume import SearchRecord
from taxi_hpo.tracking.runs import close_stale_children
from taxi_hpo.tracking.store import (
    TrackingContext,
    end_run,
    is_outage,
    outage_error,
    reopen_run,
    start_parent_run,
)


@dataclass
class ParentRun:
    """An open parent run; what the search puts in ``metrics`` and ``tags`` is logged as it ends."""

    tracking_uri: str
    experiment_id: str
    run_id: str
    metrics: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    #: children known to have ended (the trials that came back): never marked KILLED, even if a
    #: tracking server under load still reads them as RUNNING
    ended_children: set = field(default_factory=set)

    def trial_context(self, preprocessor_sha256: str = "") -> TrackingContext:
        """What a worker needs to log this search's trials as children of this run."""
        return TrackingContext(self.tracking_uri, self.experiment_id, self.run_id, preprocessor_sha256)


@contextlib.contextmanager
def parent_run(
    tracking_uri: str,
    experiment_id: str,
    params: dict,
    tags: dict,
    *,
    run_name: str = "search",
    resume: SearchRecord | None = None,
    interrupted: Callable[[], bool] = lambda: False,
) -> Iterator[ParentRun]:
    """Open a parent run with ``params`` and ``tags`` (or reopen ``resume``'s, adding ``tags``).

    ``interrupted``: true when the exception that ends the block came from a Ctrl-C that a
    library wrapped in another exception; the run then ends KILLED, as for a KeyboardInterrupt.
    """
    if resume is None:
        run = ParentRun(
            tracking_uri,
            experiment_id,
            start_parent_run(tracking_uri, experiment_id, params, tags, run_name=run_name),
        )
    else:
        run = ParentRun(tracking_uri, resume.experiment_id, resume.run_id)
        close_stale_children(tracking_uri, run.run_id)
        reopen_run(tracking_uri, run.run_id, tags)
    try:
        yield run
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt) or interrupted():
            with contextlib.suppress(TrackingError):  # Ctrl-C says what happened, whatever the store
                _end(run, "KILLED")
            raise
        _end(run, "FAILED")
        if is_outage(exc):  # the server came back for the ending, too late for the search
            raise outage_error(tracking_uri, run.run_id) from exc
        raise
    _end(run, "FINISHED")


def _end(run: ParentRun, status: str) -> None:
    """Close the children still RUNNING and end the parent ``status``; a tracking server that does
    not answer leaves them as they are, for ``--resume``, and is one line (a TrackingError)."""
    try:
        close_stale_children(run.tracking_uri, run.run_id, keep=run.ended_children)
        end_run(run.tracking_uri, run.run_id, status, metrics=run.metrics, tags=run.tags or None)
    except Exception as exc:
        if is_outage(exc):
            raise outage_error(run.tracking_uri, run.run_id) from exc
        raise
