"""The rich progress bar on stderr: trials done / total, failed, best RMSE, dashboard link."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from taxi_hpo.search.scheduler import TrialOutcome


class ProgressBar:
    """Implements the flow's Reporter protocol."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._task = None
        self.failed = 0
        self.best: float | None = None

    def start(self, total: int, dashboard: str | None, layout: str | None = None) -> None:
        """Print the ``layout`` and the ``dashboard`` link when given, then draw the bar of
        ``total`` trials."""
        if layout:
            self.console.print(f"Dask: {layout}")
        if dashboard:
            self.console.print(f"Dask dashboard: {dashboard}")
        self._progress = Progress(
            TextColumn("trials"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("failed {task.fields[failed]}  best RMSE {task.fields[best]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=not self.console.is_terminal,
        )
        self._task = self._progress.add_task("search", total=total, failed=0, best="-")
        self._progress.start()

    def update(self, outcome: TrialOutcome) -> None:
        """Advance the bar by one ended trial: a complete one may lower the best RMSE, a failed one
        counts as failed (a pruned one, or one the time budget stopped: neither), as in the summary."""
        if outcome.complete:  # a pruned trial's RMSE is of an unfinished model
            self.best = outcome.loss if self.best is None else min(self.best, outcome.loss)
        elif not outcome.ok and not outcome.cancelled:
            self.failed += 1
        if self._progress is not None:
            self._progress.update(
                self._task,
                advance=1,
                failed=self.failed,
                best=f"{self.best:.4f}" if self.best is not None else "-",
            )

    def stop(self) -> None:  # idempotent
        """Stop drawing the bar; calling it again does nothing."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def download_progress(console: Console | None = None):
    """A ``data.ProgressFn`` that draws a bar per file being downloaded."""
    console = console or Console(file=sys.stderr)
    state: dict = {}

    def report(done: int, total: int | None) -> None:
        if "progress" not in state:
            progress = Progress(
                TextColumn("download"),
                BarColumn(),
                TextColumn("{task.completed:,} B"),
                console=console,
                transient=True,
            )
            progress.start()
            state["progress"], state["task"] = progress, progress.add_task("dl", total=total)
        state["progress"].update(state["task"], completed=done)
        if total is not None and done >= total:
            state.pop("progress").stop()

    return report
