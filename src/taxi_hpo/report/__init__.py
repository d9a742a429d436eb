"""A search's report, where users look: pictures and one HTML page on the parent MLflow run.

Read from the tracking store alone (a sqlite file or a tracking server), so it can be made for
any earlier search (``taxi-hpo report PARENT_RUN_ID``) as well as at the end of one:

- ``best_so_far.png``: the best complete trial's validation RMSE against time and against the
  number of trials finished, every trial as a point (pruned ones hollow: their RMSE is that of
  an unfinished model), the LinearRegression baseline dashed;
- ``params.png``: validation RMSE against each hyperparameter (a slice plot, coloured by trial
  number, after Optuna's ``plot_slice``);
- ``timeline.png``: which trial ran on which worker when (a lane per worker and trial at the
  same time), complete, pruned, failed and stopped trials in their own colours, the best
  outlined;
- ``summary.json`` and ``report.html``: the search's figures and its ten best trials, the
  three pictures inlined, a page with no outside references (it opens from the MLflow UI's
  artifact view, or from disk); with ``--fidelity``, the ladder (fits and promotions per rung);
  and which hyperparameters mattered: each one's share of the variance of the complete trials'
  RMSE, by Optuna's fANOVA evaluator (Hutter et al. 2014) on the trials as the store holds them.
"""

from __future__ import annotations

import base64
import enum
import html
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from taxi_hpo import tracking
from taxi_hpo.errors import TrackingError
from taxi_hpo.search.promotion import ladder_counts
from taxi_hpo.search.space import decode_logged

ARTIFACT_DIR = "report"
PICTURES = ("best_so_far.png", "params.png", "timeline.png")
HYPERPARAMETERS = {
    "max_depth": False,
    "learning_rate": True,
    "reg_alpha": True,
    "reg_lambda": True,
    "min_child_weight": True,
}  # name: shown on a log axis (loguniform in the space)


class TrialState(enum.StrEnum):
    """How a trial ended, as the report shows it (a str: JSON and the page keep the plain names)."""

    COMPLETE = "complete"  # trained to the end
    PRUNED = "pruned"  # stopped at a checkpoint round: its RMSE is of an unfinished model
    SCREENED = "screened"  # fitted at a lower rung of --fidelity: a cheaper model's RMSE
    FAILED = "failed"  # its retries spent
    STOPPED = "stopped"  # the time budget (or Ctrl-C) stopped it; --resume runs it again
    RUNNING = "running"  # not ended yet


COLOURS = {
    TrialState.COMPLETE: "#2166ac",
    TrialState.PRUNED: "#f4a582",
    TrialState.SCREENED: "#92c5de",
    TrialState.FAILED: "#b2182b",
    TrialState.STOPPED: "#999999",
    TrialState.RUNNING: "#d9d9d9",
}


@dataclass
class TrialRow:
    """One attempt of a trial, as its MLflow run says."""

    trial_id: int
    state: TrialState
    started: float  # epoch seconds
    finished: float | None
    worker: str
    rmse: float | None
    params: dict = field(default_factory=dict)
    pruned_at: int | None = None
    error: str | None = None
    warm_from: str | None = None
    run_id: str = ""
    fidelity: dict = field(default_factory=dict)  # a --fidelity search's rung (flows.trials)


@dataclass
class SearchReport:
    """A search as its tracking store holds it: the parent run's status, times (epoch seconds),
    params and metrics, and one row per trial attempt."""

    parent_run_id: str
    experiment: str
    status: str
    started: float
    finished: float | None
    params: dict
    metrics: dict
    rows: list[TrialRow]

    @property
    def final(self) -> list[TrialRow]:
        """One row per trial: its complete (or pruned) attempt if any, else its last one."""
        by_trial: dict[int, TrialRow] = {}
        for row in sorted(self.rows, key=lambda r: r.started):
            kept = by_trial.get(row.trial_id)
            if kept is None or kept.state not in _ENDED_WITH_RMSE:
                by_trial[row.trial_id] = row
        return sorted(by_trial.values(), key=lambda r: r.trial_id)

    @property
    def complete(self) -> list[TrialRow]:
        """The trials that trained to the end, with an RMSE (one row each)."""
        return [r for r in self.final if r.state == TrialState.COMPLETE and r.rmse is not None]

    @property
    def best(self) -> TrialRow | None:
        """The complete trial with the lowest validation RMSE, or None."""
        return min(self.complete, key=lambda r: r.rmse, default=None)

    def summary(self) -> dict:
        """The search's figures as plain data (summary.json, the page): trials by how they ended,
        the best one, the baseline, the wall and the settings."""
        final, best = self.final, self.best
        counts = {state: sum(r.state == state for r in final) for state in COLOURS}
        importance = hyperparameter_importance(self)
        starts = [r.started for r in self.rows]
        ends = [r.finished for r in self.rows if r.finished]
        return {
            "parent_run_id": self.parent_run_id,
            "experiment": self.experiment,
            "status": self.status,
            "trials_planned": _int(self.params.get("trials")),
            "trials_run": len(final),
            "trials_complete": counts[TrialState.COMPLETE],
            "trials_pruned": counts[TrialState.PRUNED],
            "trials_screened": counts[TrialState.SCREENED],
            "trials_failed": counts[TrialState.FAILED],
            "trials_stopped": counts[TrialState.STOPPED],
            "attempts": len(self.rows),
            "workers": len({r.worker for r in self.rows}),
            "best_rmse": best.rmse if best else None,
            "best_trial": best.trial_id if best else None,
            "best_params": best.params if best else None,
            "best_run_id": best.run_id if best else None,
            "lr_rmse": self.metrics.get("lr_rmse"),
            "search_wall_s": self.metrics.get("search_wall_s")
            or (round(max(ends) - min(starts), 3) if starts and ends else None),
            "utilisation": self.metrics.get("utilisation"),
            "prune": self.params.get("prune"),
            "fidelity": self.params.get("fidelity", "none"),
            "ladder": self.ladder(),
            "importance": importance,
            "mode": self.params.get("mode"),
            "rounds": _int(self.params.get("rounds")),
            "seed": _int(self.params.get("seed")),
            "warm_started": sum(r.warm_from is not None for r in final),
        }

    def ladder(self) -> list[dict] | None:
        """A ``--fidelity`` search's ladder (``search.promotion.ladder_counts``); None without one."""
        return ladder_counts(r.fidelity for r in self.final) or None


#: A trial that ended with an RMSE: complete, pruned (an unfinished model's), screened (a cheaper one's)
_ENDED_WITH_RMSE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.SCREENED)
#: Complete trials fANOVA needs before its shares say anything
MIN_IMPORTANCE_TRIALS = 5


def hyperparameter_importance(report: SearchReport) -> dict | None:
    """Each hyperparameter's share of the variance of the complete trials' validation RMSE
    (``{name: share}``, largest first, shares summing to 1), by Optuna's fANOVA evaluator with a
    fixed seed; None below :data:`MIN_IMPORTANCE_TRIALS` complete trials."""
    complete = report.complete
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        return None
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    points = [{n: r.params[n] for n in HYPERPARAMETERS if n in r.params} for r in complete]
    distributions = {}
    for name, log in HYPERPARAMETERS.items():
        values = [p[name] for p in points if name in p]
        if len(set(values)) < 2:
            continue  # one value: nothing to attribute to it
        low, high = min(values), max(values)
        distributions[name] = (
            optuna.distributions.IntDistribution(int(low), int(high))
            if name == "max_depth"
            else optuna.distributions.FloatDistribution(float(low), float(high), log=log)
        )
    if not distributions:
        return None
    study = optuna.create_study(direction="minimize")
    for point, row in zip(points, complete):
        params = {n: int(point[n]) if n == "max_depth" else float(point[n]) for n in distributions}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=row.rmse))
    try:
        shares = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
    except (ValueError, RuntimeError, ZeroDivisionError):  # e.g. every trial the same RMSE
        return None
    if not all(math.isfinite(float(share)) for share in shares.values()):
        return None
    return {name: round(float(share), 4) for name, share in shares.items()}


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# -- reading the store ---------------------------------------------------------------------------

#: an MLflow run's status -> the trial's state (a FINISHED run with a pruned tag is PRUNED)
_STATES = {
    "FINISHED": TrialState.COMPLETE,
    "FAILED": TrialState.FAILED,
    "KILLED": TrialState.STOPPED,
    "RUNNING": TrialState.RUNNING,
    "SCHEDULED": TrialState.RUNNING,
}


def collect(tracking_uri: str, parent_run_id: str) -> SearchReport:
    """Everything the report shows, from the parent run and its child runs (TrackingError when
    ``parent_run_id`` is not a search in that store)."""
    record = tracking.load_search(tracking_uri, parent_run_id)  # says clearly what is wrong
    parent = tracking.get_run(tracking_uri, parent_run_id)
    rows = []
    for run in tracking.child_runs(tracking_uri, parent_run_id):
        tag = run.data.tags.get(tracking.TRIAL_TAG)
        if tag is None:
            continue  # the LinearRegression baseline
        state = _STATES.get(run.info.status, TrialState.RUNNING)
        pruned = run.data.tags.get(tracking.PRUNED_TAG)
        fidelity = json.loads(run.data.tags.get(tracking.FIDELITY_TAG, "{}"))
        if state == TrialState.COMPLETE and pruned is not None:
            state = TrialState.PRUNED
        elif state == TrialState.COMPLETE and not fidelity.get("complete", True):
            state = TrialState.SCREENED
        rows.append(
            TrialRow(
                trial_id=int(tag),
                state=state,
                started=run.info.start_time / 1000,
                finished=run.info.end_time / 1000 if run.info.end_time else None,
                worker=run.data.tags.get("worker", "?"),
                rmse=run.data.metrics.get("rmse_valid"),
                params=_hyperparameters(run.data.params),
                pruned_at=int(pruned) if pruned is not None else None,
                error=run.data.tags.get("error"),
                warm_from=run.data.tags.get(tracking.WARM_FROM_TAG),
                run_id=run.info.run_id,
                fidelity=fidelity,
            )
        )
    for trial_id, failed in record.failed.items():  # lost with its worker: no run of its own finished
        if not any(r.trial_id == trial_id for r in rows):
            rows.append(
                TrialRow(
                    trial_id,
                    TrialState.FAILED,
                    parent.info.start_time / 1000,
                    None,
                    "?",
                    None,
                    _hyperparameters(failed.get("params", {})),
                    error=failed.get("error"),
                )
            )
    return SearchReport(
        parent_run_id,
        tracking.experiment_name(tracking_uri, record.experiment_id),
        parent.info.status,
        parent.info.start_time / 1000,
        parent.info.end_time / 1000 if parent.info.end_time else None,
        dict(parent.data.params),
        dict(parent.data.metrics),
        rows,
    )


def _hyperparameters(params: dict) -> dict:
    """The space's hyperparameters of a trial, decoded as the search decodes logged ones."""
    return {k: v for k, v in decode_logged(params).items() if k in HYPERPARAMETERS}


# -- the pictures --------------------------------------------------------------------------------


def import_drawing() -> None:
    """Import the drawing library now (matplotlib, ~0.5 s of this 2-core machine) and Optuna's
    importance evaluators (~1 s): the search calls it in a thread while its trials run, where the
    flow process mostly waits, instead of on the way to the end of the command."""
    _pyplot()
    import optuna.importance  # noqa: F401 - imported now, used by hyperparameter_importance


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _rmse_limits(report: SearchReport) -> tuple[float, float] | None:
    """A y range that shows the complete trials well: pruned trials' RMSEs (unfinished models)
    and wild failures may sit far above and are drawn at the top edge instead."""
    values = sorted(r.rmse for r in report.complete)
    if not values:
        values = sorted(r.rmse for r in report.final if r.rmse is not None)
    if not values:
        return None
    top = values[min(len(values) - 1, int(0.9 * len(values)))]
    baseline = report.metrics.get("lr_rmse")
    if baseline is not None and baseline < 1.2 * top:
        top = max(top, baseline)
    span = max(top - values[0], 1e-3)
    return values[0] - 0.08 * span, top + 0.12 * span


def _clip(value: float, limits) -> float:
    return min(value, limits[1] - 0.02 * (limits[1] - limits[0])) if limits else value


def plot_best_so_far(report: SearchReport, path: Path) -> None:
    """Draw ``best_so_far.png`` at ``path``: the best complete trial's RMSE so far and every
    finished trial, against time and against trials finished."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    done = sorted((r for r in report.final if r.rmse is not None and r.finished), key=lambda r: r.finished)
    t0 = min((r.started for r in report.rows), default=report.started)
    limits = _rmse_limits(report)
    scale, unit = (60, "minutes") if done and done[-1].finished - t0 > 300 else (1, "seconds")
    for ax, xs, xlabel in (
        (axes[0], [(r.finished - t0) / scale for r in done], f"{unit} since the first trial started"),
        (axes[1], list(range(1, len(done) + 1)), "trials finished"),
    ):
        best, steps = math.inf, []
        for _x, r in zip(xs, done):
            if r.state == TrialState.COMPLETE and r.rmse < best:
                best = r.rmse
            steps.append(best if best < math.inf else math.nan)
        complete = [(x, r.rmse) for x, r in zip(xs, done) if r.state == TrialState.COMPLETE]
        pruned = [(x, _clip(r.rmse, limits)) for x, r in zip(xs, done) if r.state == TrialState.PRUNED]
        screened = [(x, _clip(r.rmse, limits)) for x, r in zip(xs, done) if r.state == TrialState.SCREENED]
        if complete:
            ax.scatter(
                *zip(*[(x, _clip(y, limits)) for x, y in complete]),
                s=16,
                color=COLOURS[TrialState.COMPLETE],
                alpha=0.55,
                label="trial (complete)",
            )
        if pruned:
            ax.scatter(
                *zip(*pruned),
                s=22,
                facecolors="none",
                edgecolors=COLOURS["pruned"],
                label="trial (pruned: RMSE where it stopped)",
            )
        if screened:
            ax.scatter(
                *zip(*screened),
                s=14,
                facecolors="none",
                edgecolors=COLOURS[TrialState.SCREENED],
                label="trial (screened: a lower rung's RMSE)",
            )
        ax.plot(xs, steps, drawstyle="steps-post", color="black", linewidth=1.6, label="best so far")
        if report.metrics.get("lr_rmse") is not None:
            ax.axhline(
                report.metrics["lr_rmse"],
                color="grey",
                linestyle="--",
                linewidth=1,
                label=f"LinearRegression {report.metrics['lr_rmse']:.4f}",
            )
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation RMSE (minutes)")
    if limits:
        axes[0].set_ylim(*limits)
    best = report.best
    fig.suptitle(
        f"Search {report.parent_run_id[:8]}: best RMSE {best.rmse:.4f} (trial {best.trial_id})"
        if best
        else f"Search {report.parent_run_id[:8]}: no complete trial",
        fontsize=10,
    )
    axes[1].legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_params(report: SearchReport, path: Path) -> None:
    """Draw ``params.png`` at ``path``: each finished trial's validation RMSE against each
    hyperparameter, the best starred."""
    plt = _pyplot()
    names = list(HYPERPARAMETERS)
    fig, axes = plt.subplots(1, len(names), figsize=(3.0 * len(names), 3.6), sharey=True)
    limits = _rmse_limits(report)
    rows = [r for r in report.final if r.rmse is not None]
    complete = [r for r in rows if r.state == TrialState.COMPLETE]
    pruned = [r for r in rows if r.state in (TrialState.PRUNED, TrialState.SCREENED)]
    best = report.best
    scatter = None
    for ax, name in zip(axes, names):
        xs = [r.params.get(name) for r in complete]
        if complete:
            scatter = ax.scatter(
                xs,
                [_clip(r.rmse, limits) for r in complete],
                c=[r.trial_id for r in complete],
                cmap="viridis",
                s=18,
                vmin=0,
                vmax=max(r.trial_id for r in rows),
            )
        if pruned:
            ax.scatter(
                [r.params.get(name) for r in pruned],
                [_clip(r.rmse, limits) for r in pruned],
                s=18,
                facecolors="none",
                edgecolors=[COLOURS[r.state] for r in pruned],
            )
        if best:
            ax.scatter([best.params.get(name)], [best.rmse], marker="*", s=160, color="#d62728", zorder=3)
        if HYPERPARAMETERS[name]:
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation RMSE")
    if limits:
        axes[0].set_ylim(*limits)
    if scatter is not None:
        fig.colorbar(scatter, ax=list(axes), label="trial number", fraction=0.02, pad=0.01)
    fig.suptitle(
        "Validation RMSE against each hyperparameter (star: best; hollow: pruned or screened)", fontsize=10
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def lanes(rows: list[TrialRow], now: float) -> list[tuple[str, int, TrialRow]]:
    """``(worker, lane, row)``: trials on one worker that overlap in time get lanes of their own."""
    placed, ends = [], {}
    for row in sorted(rows, key=lambda r: (r.worker, r.started)):
        free = ends.setdefault(row.worker, [])
        lane = next((i for i, end in enumerate(free) if end <= row.started + 1e-3), len(free))
        if lane == len(free):
            free.append(0.0)
        free[lane] = row.finished or now
        placed.append((row.worker, lane, row))
    return placed


def plot_timeline(report: SearchReport, path: Path) -> None:
    """Draw ``timeline.png`` at ``path``: each attempt as a bar on its worker's lane, coloured by
    how it ended, the best outlined (one still running: up to now)."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    now = time.time()
    placed = lanes(report.rows, now)
    names = sorted({(w, lane) for w, lane, _ in placed})
    y = {key: i for i, key in enumerate(names)}
    t0 = min((r.started for r in report.rows), default=report.started)
    best = report.best
    fig, ax = plt.subplots(figsize=(11, max(2.2, 0.42 * len(names) + 1.2)))
    for worker, lane, row in placed:
        start, end = row.started - t0, (row.finished or now) - t0
        ax.barh(
            y[(worker, lane)],
            end - start,
            left=start,
            height=0.8,
            color=COLOURS[row.state],
            edgecolor="black" if best is not None and row.run_id == best.run_id else "white",
            linewidth=1.8 if best is not None and row.run_id == best.run_id else 0.5,
        )
        if end - start > 0.04 * max(1.0, (max((r.finished or now) for r in report.rows) - t0)):
            ax.text(
                (start + end) / 2,
                y[(worker, lane)],
                str(row.trial_id),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if row.state in ("complete", "failed") else "black",
            )
    ax.set_yticks(
        range(len(names)), [_short(w) + (f" ({lane + 1})" if lane else "") for w, lane in names], fontsize=8
    )
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first trial started")
    ax.legend(
        handles=[Patch(color=COLOURS[s], label=s) for s in ("complete", "pruned", "failed", "stopped")]
        + ([Patch(facecolor="white", edgecolor="black", label="best")] if best else []),
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.22 if len(names) < 4 else -0.1),
        ncol=5,
        frameon=False,
    )
    ax.set_title(f"Trials on the workers ({len(report.rows)} attempts)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _short(worker: str) -> str:
    return worker if len(worker) <= 28 else "…" + worker[-27:]


# -- the page --------------------------------------------------------------------------------------

_CSS = """body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222;max-width:1150px}
table{border-collapse:collapse;margin:0.5rem 0 1.5rem}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:left;font-size:14px}th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee;margin:0.5rem 0}
.num{text-align:right;font-variant-numeric:tabular-nums}"""


def render_html(report: SearchReport, pictures: dict[str, bytes], summary: dict | None = None) -> str:
    """``report.html``: the summary, the ten best complete trials and ``pictures`` (``{file name:
    PNG bytes}``) inlined, one page with no outside references. ``summary``: ``report.summary()``
    when the caller has it already (it fits fANOVA: not worth doing twice)."""
    s = summary or report.summary()
    esc = html.escape
    facts = [
        ("search (parent run)", s["parent_run_id"]),
        ("experiment", s["experiment"]),
        ("status", s["status"]),
        (
            "trials",
            f"{s['trials_run']} run of {s['trials_planned']} planned: {s['trials_complete']} complete, "
            f"{s['trials_pruned']} pruned, {s['trials_screened']} screened, {s['trials_failed']} failed, "
            f"{s['trials_stopped']} stopped",
        ),
        (
            "best validation RMSE",
            f"{s['best_rmse']:.4f} (trial {s['best_trial']})" if s["best_rmse"] else "none",
        ),
        ("LinearRegression baseline", f"{s['lr_rmse']:.4f}" if s["lr_rmse"] is not None else "-"),
        ("search wall", f"{s['search_wall_s']:.1f} s" if s["search_wall_s"] else "-"),
        ("utilisation", s["utilisation"] if s["utilisation"] is not None else "-"),
        ("workers", s["workers"]),
        ("mode, pruning, fidelity", f"{s['mode']}, {s['prune']}, {s['fidelity']}"),
        ("rounds, seed", f"{s['rounds']}, {s['seed']}"),
        ("warm-started trials", s["warm_started"]),
    ]
    out = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>taxi-hpo search {esc(s['parent_run_id'][:8])}</title><style>{_CSS}</style></head><body>",
        f"<h1>Search {esc(s['parent_run_id'][:8])}</h1><h2>Summary</h2><table>",
    ]
    out += [f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in facts]
    out.append(
        "</table><h2>Best trials</h2><table><tr><th>trial</th><th>validation RMSE</th>"
        + "".join(f"<th>{esc(n)}</th>" for n in HYPERPARAMETERS)
        + "<th>worker</th><th>seconds</th></tr>"
    )
    for r in sorted(report.complete, key=lambda r: r.rmse)[:10]:
        seconds = f"{r.finished - r.started:.1f}" if r.finished else "-"
        out.append(
            f"<tr><td>{r.trial_id}</td><td class='num'>{r.rmse:.4f}</td>"
            + "".join(f"<td class='num'>{_fmt(r.params.get(n))}</td>" for n in HYPERPARAMETERS)
            + f"<td>{esc(_short(r.worker))}</td><td class='num'>{seconds}</td></tr>"
        )
    out.append("</table>")
    out += _ladder_html(s["ladder"]) + _importance_html(s["importance"], len(report.complete))
    titles = {
        "best_so_far.png": "Best so far",
        "params.png": "RMSE against each hyperparameter",
        "timeline.png": "Timeline",
    }
    for name, blob in pictures.items():
        data = base64.b64encode(blob).decode()
        out.append(
            f"<h2>{titles.get(name, name)}</h2><img alt='{esc(titles.get(name, name))}' "
            f"src='data:image/png;base64,{data}'>"
        )
    out.append("</body></html>")
    return "\n".join(out)


def _ladder_html(ladder: list[dict] | None) -> list[str]:
    """The ladder's table: per rung its rows and rounds, fits and promotions (none without one)."""
    if not ladder:
        return []
    out = [
        "<h2>The ladder</h2><table><tr><th>rung</th><th>training rows</th><th>rounds</th>"
        "<th>trials fitted</th><th>promoted from the rung below</th></tr>"
    ]
    for r in ladder:
        rounds = r["rounds"] if r["rounds"] is not None else "all"
        out.append(
            f"<tr><td>{r['rung']}</td><td class='num'>{r['rows']:.3g}</td><td class='num'>{rounds}</td>"
            f"<td class='num'>{r['fits']}</td><td class='num'>{r['promoted']}</td></tr>"
        )
    return [*out, "</table>"]


def _importance_html(importance: dict | None, complete: int) -> list[str]:
    """Which hyperparameters mattered: each one's share as a number and a bar."""
    out = ["<h2>Which hyperparameters mattered</h2>"]
    if not importance:
        return [*out, f"<p>{complete} complete trials: fANOVA needs {MIN_IMPORTANCE_TRIALS} or more.</p>"]
    out.append(
        f"<p>Share of the variance of the {complete} complete trials' validation RMSE that each "
        "hyperparameter explains (Optuna's fANOVA).</p><table><tr><th>hyperparameter</th><th>share</th>"
        "<th></th></tr>"
    )
    for name, share in importance.items():
        bar = f"<div style='background:#2166ac;height:10px;width:{round(share * 300)}px'></div>"
        out.append(f"<tr><td>{html.escape(name)}</td><td class='num'>{share:.1%}</td><td>{bar}</td></tr>")
    return [*out, "</table>"]


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value)) if value is not None else "-"


def write(report: SearchReport, out: Path) -> list[Path]:
    """The pictures, summary.json and report.html into ``out``; returns the files."""
    if not report.rows:  # before the folder exists: a refused report leaves nothing behind
        raise TrackingError(f"search {report.parent_run_id} has no trial runs yet: nothing to report")
    out.mkdir(parents=True, exist_ok=True)
    plot_best_so_far(report, out / "best_so_far.png")
    plot_params(report, out / "params.png")
    plot_timeline(report, out / "timeline.png")
    summary = report.summary()
    (out / "summary.json").write_text(
        json.dumps({**summary, "trials": [asdict(r) for r in report.final]}, indent=1, default=str)
    )
    pictures = {name: (out / name).read_bytes() for name in PICTURES}
    (out / "report.html").write_text(render_html(report, pictures, summary), encoding="utf-8")
    return [out / name for name in (*PICTURES, "summary.json", "report.html")]


def ended_as(
    loss: float | None, pruned_at: int | None, cancelled: bool, finished: float, complete_fit: bool = True
) -> dict:
    """How a trial ended, as the search knows it: overrides its run's row (see ``publish``).
    ``complete_fit``: False for a lower rung of a ``--fidelity`` search."""
    if cancelled:
        state = TrialState.STOPPED
    elif loss is None:
        state = TrialState.FAILED
    elif pruned_at is not None:
        state = TrialState.PRUNED
    elif not complete_fit:
        state = TrialState.SCREENED
    else:
        state = TrialState.COMPLETE
    return {"state": state, "rmse": loss, "finished": finished, "pruned_at": pruned_at}


def apply_ended(report: SearchReport, ended: dict[str, dict]) -> None:
    """Rows the store still shows running, for trials the search saw end, take those ends."""
    for row in report.rows:
        known = ended.get(row.run_id)
        if known and row.state == TrialState.RUNNING:
            row.state, row.rmse, row.pruned_at = known["state"], known["rmse"], known["pruned_at"]
            row.finished = row.finished or known["finished"]


def publish(
    tracking_uri: str,
    parent_run_id: str,
    out: Path | None = None,
    metrics: dict | None = None,
    status: str | None = None,
    ended: dict[str, dict] | None = None,
) -> list[Path]:
    """Make the report and log it under ``report/`` on the parent run (also into ``out`` if
    given). ``metrics``, ``status``: the parent's, when a search reports before it closes;
    ``ended``: ``{run id: ended_as(...)}`` for the trials the search saw end."""
    report = collect(tracking_uri, parent_run_id)
    report.metrics.update(metrics or {})
    report.status = status or report.status
    apply_ended(report, ended or {})
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(out) if out is not None else Path(tmp)
        files = write(report, where)
        tracking.log_artifacts(tracking_uri, parent_run_id, files, ARTIFACT_DIR)
        return files if out is not None else []
