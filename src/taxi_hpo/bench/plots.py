"""The benchmark's pictures: speedup against the ideal line, and a Gantt chart per layout."""

from __future__ import annotations

import math
from pathlib import Path

from taxi_hpo.bench.metrics import _ok, busy_s, utilisation


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def _caption(result: dict) -> str:
    s, m = result["settings"], result["machine"]
    return (
        f"{s['trials']} trials, {s['rounds']} rounds, max_depth <= {s['max_depth']}, {s['mode']}, "
        f"seed {s['seed']}, median of {s['repeats']}; {m['cores']} cores"
    )


def plot_speedup(result: dict, path: Path) -> None:
    """Bars: median speedup over seq (whiskers: min..max over repeats); the ideal: cores used."""
    plt = _pyplot()
    rows = result["layouts"]
    x = list(range(len(rows)))
    values = [r["speedup_vs_seq"] if r["speedup_vs_seq"] is not None else math.nan for r in rows]
    low = [v - r["speedup_min"] if r["speedup_min"] is not None else 0 for v, r in zip(values, rows)]
    high = [r["speedup_max"] - v if r["speedup_max"] is not None else 0 for v, r in zip(values, rows)]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(rows) + 2), 4))
    ax.bar(x, values, yerr=[low, high], capsize=4, color="#4c72b0", label="measured (vs seq)")
    ax.plot(x, [r["cores"] for r in rows], "k--o", label="ideal: cores used (vs one core)")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    for xi, v in zip(x, values):
        if not math.isnan(v):
            ax.annotate(
                f"{v:.2f}x", (xi, v), ha="center", va="bottom", xytext=(0, 3), textcoords="offset points"
            )
    ax.set_xticks(x, [r["layout"] for r in rows])
    ax.set_xlabel("layout (workers x threads)")
    ax.set_ylabel("speedup over seq (search wall)")
    ax.set_ylim(0, 1.25 * max([1.0] + [v for v in values if not math.isnan(v)] + [r["cores"] for r in rows]))
    ax.set_title(_caption(result), fontsize=8)
    ax.legend(fontsize=8, loc="upper center", ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


_BUSY, _FIT, _FAILED = "#c6dbef", "#2166ac", "#f4a582"


def _representative(runs: list[dict]) -> dict:
    """The run whose wall time is the median of its layout's runs."""
    ordered = sorted(runs, key=lambda r: r["wall_s"])
    return ordered[(len(ordered) - 1) // 2]


def plot_timeline(result: dict, path: Path) -> None:
    """Gantt chart per layout (its median-wall run): one row per slot, one bar per trial."""
    plt = _pyplot()
    names = [r["layout"] for r in result["layouts"]]
    runs = [_representative([r for r in result["runs"] if r["layout"] == n]) for n in names]
    heights = [max(len({t["worker"] for t in run["trials"]}), run["slots"], 1) for run in runs]
    fig, axes = plt.subplots(
        len(runs),
        1,
        sharex=True,
        squeeze=False,
        figsize=(10, 1.4 + sum(0.45 * h + 0.6 for h in heights)),
        gridspec_kw={"height_ratios": heights},
    )
    for ax, run in zip(axes[:, 0], runs):
        _gantt(ax, run)
    axes[-1, 0].set_xlim(left=0)
    axes[-1, 0].set_xlabel("seconds since the search started")
    from matplotlib.patches import Patch

    legend = [
        Patch(color=_BUSY, label="slot busy (fit + overhead)"),
        Patch(color=_FIT, label="XGBoost fit time"),
        Patch(color=_FAILED, label="failed trial"),
    ]
    fig.suptitle(_caption(result), fontsize=8)
    fig.legend(handles=legend, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _gantt(ax, run: dict) -> None:
    trials = [t for t in run["trials"] if t["started"]]
    # The gap before the first bar is the time the search spent before any trial ran.
    t0 = run.get("search_started") or max((t["finished"] for t in trials), default=0.0) - run["wall_s"]
    slots = sorted(
        {t["worker"] for t in trials}, key=lambda w: min(t["started"] for t in trials if t["worker"] == w)
    )
    row = {w: i for i, w in enumerate(slots)}
    base = max(1, run.get("cores", 1) // max(run["slots"], 1))
    for t in trials:
        y, left, busy = row[t["worker"]], t["started"] - t0, busy_s(t)
        failed = not _ok(t)
        ax.barh(
            y,
            busy,
            left=left,
            height=0.8,
            color=_FAILED if failed else _BUSY,
            edgecolor="black",
            linewidth=0.5,
        )
        if not failed:
            ax.barh(y, t["fit_s"], left=left, height=0.4, color=_FIT)
        # A trial that took idle cores (elastic threads) shows its time-weighted thread count.
        grown = (t.get("threads_mean") or base) > base + 0.05
        label = f"{t['trial_id']} ({t['threads_mean']:.1f}t)" if grown else str(t["trial_id"])
        ax.text(left + busy / 2, y, label, ha="center", va="center", fontsize=7)
    util = utilisation(run["trials"], run["slots"], run["wall_s"])
    rows = max(len(slots), run["slots"])  # a slot that never got a trial still shows, empty
    ax.set_yticks(range(rows), [f"slot {i}" for i in range(rows)], fontsize=7)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.set_title(
        f"{run['layout']} (repeat {run['repeat'] + 1}): search {run['wall_s']:.1f} s, utilisation {util:.2f}"
        if util is not None
        else run["layout"],
        fontsize=8,
        loc="left",
    )


# -- the command ---------------------------------------------------------------------------------


def plot_plan(plan: dict, path: Path) -> None:
    """Predicted search wall against the hosts rented, one line per layout (log-log)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    series: dict[str, list] = {}
    for row in plan["rows"]:
        if row["seq"]:
            ax.axhline(
                row["wall_s"], color="grey", linestyle=":", label=f"seq on one host ({row['wall_s']:.0f} s)"
            )
            continue
        name = row["layout"].split("(")[-1].rstrip(")")
        series.setdefault(name, []).append((row["hosts"], row["wall_s"]))
    for name, points in sorted(series.items()):
        points.sort()
        style = "--" if name.endswith("-fixed") else "-"
        ax.plot([p[0] for p in points], [p[1] for p in points], style, marker="o", label=f"{name} per host")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    hosts = sorted({row["hosts"] for row in plan["rows"]})
    ax.set_xticks(hosts, [str(h) for h in hosts])
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("hosts")
    ax.set_ylabel("predicted search wall (s)")
    cm = plan["cost_model"]
    ax.set_title(
        f"{plan['trials']} trials, {plan['rounds']} rounds, max_depth <= {plan['max_depth']}, "
        f"{plan['mode']}; "
        f"threads: {cm['speedup_at_cores']:.1f}x on a host's cores",
        fontsize=8,
    )
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
