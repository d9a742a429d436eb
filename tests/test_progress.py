"""The progress bar counts trials as the summary does: a stopped trial is not a failed one."""

from __future__ import annotations

import io

from rich.console import Console

from taxi_hpo.cli.progress import ProgressBar
from taxi_hpo.search import TrialOutcome


def test_the_bar_counts_failures_and_the_best_complete_trial_only():
    out = io.StringIO()
    bar = ProgressBar(Console(file=out, force_terminal=False, width=120))
    bar.start(5, "http://127.0.0.1:8787/status", "2 workers x 1 XGBoost thread")
    bar.update(TrialOutcome(0, {}, 6.5))
    bar.update(TrialOutcome(1, {}, 6.1, pruned_at=3))  # pruned: its RMSE is of an unfinished model
    bar.update(TrialOutcome(2, {}, None, error="boom"))  # failed
    bar.update(TrialOutcome(3, {}, None, error="stopped: the time budget ran out", cancelled=True))
    bar.update(TrialOutcome(4, {}, 6.3))
    bar.stop()
    bar.stop()  # idempotent
    assert (bar.failed, bar.best) == (1, 6.3)
    text = out.getvalue()
    assert (
        "Dask: 2 workers x 1 XGBoost thread" in text
        and "Dask dashboard: http://127.0.0.1:8787/status" in text
    )
