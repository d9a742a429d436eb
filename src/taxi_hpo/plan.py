"""``taxi-hpo plan``: how many workers to rent, predicted by simulating the search.

Reads measured trials (a ``bench.json`` of ``taxi-hpo bench``), fits a cost model (seconds by
parameters and threads, :mod:`taxi_hpo.search.simulate`), then runs the real scheduler and TPE
on a virtual clock for each cluster asked for: hosts of C cores, W workers each, elastic
threads on and off, async or batch. ``--check`` first replays the measured layouts and prints
predicted against measured wall, so you can see how far to trust the rest.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from taxi_hpo.config import parse_wxt
from taxi_hpo.errors import ConfigError
from taxi_hpo.search.scheduler import MODES

PARALLEL_REFS = ("seq", "script")


# -- what a bench.json teaches (pure) --------------------------------------------------------------


def samples_from_bench(result: dict) -> list:
    """Every finished trial of every run: its point, training seconds, threads and loss."""
    from taxi_hpo.search.simulate import Sample

    samples = []
    for run in result["runs"]:
        base = max(1, run.get("cores", 1) // max(run.get("slots", 1), 1))
        for t in run["trials"]:
            seconds = t.get("train_s") or t.get("fit_s")
            if t.get("loss") is None or not seconds or not t.get("params"):
                continue
            samples.append(
                Sample(t["params"], float(seconds), float(t.get("threads_mean") or base), t["loss"])
            )
    return samples


def fit_scaling(samples: list):
    """Amdahl's serial share from points measured on different whole thread counts (median of
    the pairs), or the default when every point ran on one count."""
    from taxi_hpo.search.simulate import ThreadScaling, _point_key

    by_point: dict = {}
    for s in samples:
        if abs(s.threads - round(s.threads)) < 0.01:
            by_point.setdefault(_point_key(s.params), {}).setdefault(int(round(s.threads)), []).append(
                s.seconds
            )
    shares = []
    for counts in by_point.values():
        if 1 in counts:
            one = statistics.median(counts[1])
            for k, seconds in counts.items():
                if k > 1:
                    shares.append(ThreadScaling.from_speedup(k, one / statistics.median(seconds)).serial)
    return ThreadScaling(statistics.median(shares)) if shares else ThreadScaling()


def overheads_from_bench(result: dict):
    """Dispatch latency and per-trial bookkeeping of the parallel runs (medians)."""
    from taxi_hpo.search.simulate import Overheads

    gaps, after = [], []
    for run in result["runs"]:
        if run["layout"] in PARALLEL_REFS:
            continue
        by_slot: dict = {}
        for t in sorted(run["trials"], key=lambda t: t["started"] or 0):
            by_slot.setdefault(t["worker"], []).append(t)
            seconds = t.get("train_s") or t.get("fit_s")
            if t.get("started") and t.get("finished") and seconds:
                after.append(max(t["finished"] - t["started"] - seconds, 0.0))
        for trials in by_slot.values():
            gaps += [
                b["started"] - a["finished"]
                for a, b in zip(trials, trials[1:])
                if a["finished"] and b["started"]
            ]
    defaults = Overheads()
    return Overheads(
        flow_s=defaults.flow_s,
        per_history_s=defaults.per_history_s,
        dispatch_s=max(statistics.median(gaps) - defaults.flow_s, 0.0) if gaps else defaults.dispatch_s,
        after_s=statistics.median(after) if after else defaults.after_s,
    )


def parse_sim_layout(text: str, cores: int, hosts: int = 1):
    """``seq``, ``WxT`` or ``WxT-fixed`` on ``hosts`` hosts of ``cores`` cores."""
    from taxi_hpo.search.simulate import SimLayout

    item = text.strip().lower()
    if item in PARALLEL_REFS:
        return SimLayout(item, 1, cores, 1, cores, elastic=False, seq=True)
    wxt = parse_wxt(item)
    if wxt is None:
        raise ConfigError(
            f"layout {text!r} is not seq or WxT[-fixed] (W workers x T threads, both >= 1): "
            f"e.g. 16x1, 8x2-fixed"
        )
    workers, threads, elastic = wxt
    name = f"{hosts}x({item})" if hosts > 1 else item
    return SimLayout(name, hosts, cores, workers, threads, elastic=elastic)


# -- the command -----------------------------------------------------------------------------------


def add_parser(sub) -> None:
    """Add ``taxi-hpo plan`` and its flags to the subparsers ``sub``."""
    p = sub.add_parser(
        "plan", help="predict a search's wall on clusters you do not have (simulation)", description=__doc__
    )
    p.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="BENCH_JSON",
        help="bench.json of `taxi-hpo bench` whose trials fit the cost model",
    )
    p.add_argument("--trials", type=int, default=None, help="trials to simulate (default: the bench's)")
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="boosting rounds (default: the bench's; costs scale linearly)",
    )
    p.add_argument(
        "--max-depth", type=int, default=None, help="upper bound of max_depth (default: the bench's)"
    )
    p.add_argument("--seed", type=int, default=None, help="TPE seed (default: the bench's)")
    p.add_argument("--mode", choices=MODES, default=None, help="default: the bench's")
    p.add_argument("--cores", type=int, default=None, help="cores per host (default: the bench machine's)")
    p.add_argument(
        "--hosts", default="1", help="comma-separated host counts to try, e.g. 1,2,4,8 (default 1)"
    )
    p.add_argument(
        "--layouts",
        default=None,
        help="per host: seq, WxT (elastic) or WxT-fixed, comma-separated (default: seq,Cx1,Cx1-fixed)",
    )
    p.add_argument(
        "--speedup",
        default=None,
        metavar="K:X",
        help="K threads run a trial X times faster than one (default: fitted from the bench when it "
        "measured the same points on different thread counts, else 16:8.9 from a 16-core machine)",
    )
    p.add_argument(
        "--scale", type=float, default=1.0, help="multiply every trial's cost (a slower machine: > 1)"
    )
    p.add_argument(
        "--check", action="store_true", help="replay the bench's own layouts: predicted vs measured wall"
    )
    p.add_argument("--out", default=None, help="folder for plan.json and plan.png")
    p.add_argument("--json", action="store_true", help="print the table as one JSON object")


def main(args: argparse.Namespace) -> int:
    """Run ``taxi-hpo plan`` with the parsed ``args``: fit the cost model to the bench's trials,
    simulate each layout on each host count and print the table (``--json``: one JSON object); exit
    status 0.

    ``--out``: also write plan.json and plan.png there. Raises ConfigError for a bench.json that
    cannot be read or holds no finished trial.
    """
    from taxi_hpo.search.simulate import CostModel, NearestLoss, simulate

    source = Path(args.source)
    try:
        bench = json.loads(source.read_text())
        settings = bench["settings"]
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"--from {source}: not a readable bench.json of `taxi-hpo bench` ({exc})") from exc
    samples = samples_from_bench(bench)
    if not samples:
        raise ConfigError(f"--from {source}: it holds no finished trials to learn from")
    scaling = _scaling(args.speedup) if args.speedup else fit_scaling(samples)
    cost = CostModel.fit(samples, int(settings["rounds"]), scaling)
    cost.scale = args.scale
    loss = NearestLoss(samples)
    overheads = overheads_from_bench(bench)
    cores = args.cores or int(bench["machine"].get("cores_usable") or bench["machine"]["cores"])
    trials = args.trials or int(settings["trials"])
    common = {
        "seed": args.seed if args.seed is not None else int(settings["seed"]),
        "max_depth": args.max_depth or int(settings["max_depth"]),
        "mode": args.mode or settings["mode"],
        "overheads": overheads,
        "rounds": args.rounds or int(settings["rounds"]),
    }
    out = {
        "source": str(source),
        "cost_model": {
            "coef": cost.coef,
            "serial_share": scaling.serial,
            "speedup_at_cores": scaling.speedup(cores),
            "residual_sd_log": cost.residual_sd,
            "scale": cost.scale,
        },
        "overheads": vars(overheads),
        "trials": trials,
        **{k: v for k, v in common.items() if k != "overheads"},
    }
    if args.check:
        out["check"] = check_against_bench(bench, cost, loss, overheads)
    rows = []
    names = (args.layouts or f"seq,{cores}x1,{cores}x1-fixed").split(",")
    for hosts in _ints(args.hosts, "--hosts"):
        for name in names:
            layout = parse_sim_layout(name, cores, hosts)
            if layout.seq and hosts > 1:
                continue
            result = simulate(cost, loss, layout, trials, **common)
            rows.append(
                {
                    k: result[k]
                    for k in ("layout", "wall_s", "slots", "cores", "utilisation", "core_utilisation")
                }
                | {
                    "hosts": hosts,
                    "elastic": layout.elastic,
                    "seq": layout.seq,
                    "one_thread_s": result["one_thread_s"],
                    "longest_one_thread_s": result["longest_one_thread_s"],
                }
            )
    seq = next((r["wall_s"] for r in sorted(rows, key=lambda r: r["layout"] != "seq") if r["seq"]), None)
    for row in rows:
        row["speedup_vs_seq"] = seq / row["wall_s"] if seq else None
        row["core_hours"] = row["cores"] * row["wall_s"] / 3600
    out["rows"] = rows
    out["advice"] = advice(rows, trials)
    if args.out:
        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "plan.json").write_text(json.dumps(out, indent=1, default=str))
        from taxi_hpo.bench.plots import plot_plan

        plot_plan(out, folder / "plan.png")
    print(json.dumps(out, default=str) if args.json else format_plan(out))
    return 0


def check_against_bench(bench: dict, cost, loss, overheads) -> list[dict]:
    """Each measured layout simulated with the bench's own settings: predicted against measured."""
    from taxi_hpo.search.simulate import simulate

    s, cores = bench["settings"], int(bench["machine"].get("cores_usable") or bench["machine"]["cores"])
    rows = []
    for name in s["layouts"]:
        measured = [r["wall_s"] for r in bench["runs"] if r["layout"] == name]
        if not measured:
            continue
        layout = parse_sim_layout(name, cores)
        result = simulate(
            cost,
            loss,
            layout,
            int(s["trials"]),
            seed=int(s["seed"]),
            max_depth=int(s["max_depth"]),
            mode=s["mode"],
            overheads=overheads,
            rounds=int(s["rounds"]),
        )
        wall = statistics.median(measured)
        rows.append(
            {
                "layout": name,
                "measured_wall_s": round(wall, 2),
                "predicted_wall_s": round(result["wall_s"], 2),
                "error": round(result["wall_s"] / wall - 1, 4),
            }
        )
    return rows


def advice(rows: list[dict], trials: int) -> str | None:
    """The fewest hosts whose doubling would save less than 15 % of the wall (elastic layouts)."""
    parallel = sorted(
        (r for r in rows if not r["seq"] and r["elastic"]), key=lambda r: (r["hosts"], r["wall_s"])
    )
    best_by_hosts: dict[int, dict] = {}
    for row in parallel:
        best_by_hosts.setdefault(row["hosts"], row)
    counts = sorted(best_by_hosts)
    if len(counts) < 2:
        return None
    for here, nxt in zip(counts, counts[1:]):
        saved = 1 - best_by_hosts[nxt]["wall_s"] / best_by_hosts[here]["wall_s"]
        if saved < 0.15:
            row = best_by_hosts[here]
            return (
                f"for {trials} trials: {here} host(s) ({row['layout']}), predicted {row['wall_s']:.0f} s; "
                f"{nxt} would save only {saved:.0%}"
            )
    row = best_by_hosts[counts[-1]]
    return (
        f"for {trials} trials: still scaling at {counts[-1]} hosts ({row['layout']}, predicted "
        f"{row['wall_s']:.0f} s)"
    )


def format_plan(out: dict) -> str:
    """The plan as text: the cost model, the ``--check`` rows, the table of layouts and the
    advice."""
    cm = out["cost_model"]
    lines = [
        f"cost model: serial share {cm['serial_share']:.3f} (speedup "
        f"{cm['speedup_at_cores']:.2f}x on all cores), "
        f"log-residual sd {cm['residual_sd_log']:.2f}; dispatch {out['overheads']['dispatch_s']:.3f} s, "
        f"after-fit {out['overheads']['after_s']:.3f} s per trial"
    ]
    for row in out.get("check", []):
        lines.append(
            f"check {row['layout']}: measured {row['measured_wall_s']} s, predicted "
            f"{row['predicted_wall_s']} s ({row['error']:+.1%})"
        )
    header = (
        "layout",
        "hosts",
        "cores",
        "slots",
        "wall_s",
        "speedup_vs_seq",
        "core_utilisation",
        "core_hours",
    )
    table = [header] + [tuple(_cell(r[k]) for k in header) for r in out["rows"]]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    lines += ["  ".join(str(v).rjust(w) for v, w in zip(row, widths)) for row in table]
    if out.get("advice"):
        lines.append(out["advice"])
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    return "-" if value is None else str(value)


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: give whole numbers, e.g. 1,2,4") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{flag} {text!r}: give numbers >= 1")
    return values


def _scaling(text: str):
    from taxi_hpo.search.simulate import ThreadScaling

    try:
        threads, speedup = (float(x) for x in text.split(":"))
        return ThreadScaling.from_speedup(threads, speedup)
    except ValueError:
        raise ConfigError(f"--speedup {text!r}: give K:X with K > 1 threads and X > 0, e.g. 16:8.9") from None
