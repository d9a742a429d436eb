"""``taxi-hpo bench``: the reference search against parallel layouts, same trials, same data.

A layout ``WxT`` is W Dask worker processes with T XGBoost threads each; ``seq`` is the
reference search (one process, ``fmin``, XGBoost on every core). All layouts run the same
budget in one invocation, alternating across repeats so that a noisy machine hurts them alike.
The arithmetic comes first as small pure functions; then the runs, the pictures, the command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

from taxi_hpo.config import usable_cores
from taxi_hpo.errors import ConfigError

SEQ = "seq"
EXPERIMENT = "taxi-hpo-bench"
MODES = ("async", "batch")
PACKAGES = ("taxi-hpo", "xgboost", "xgboost-cpu", "hyperopt", "prefect", "prefect-dask", "dask",
            "distributed", "mlflow", "numpy", "scikit-learn", "matplotlib")
_LAYOUT_RE = re.compile(r"^(\d+)x(\d+)$")


# -- layouts -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Layout:
    """How trials run: ``workers`` slots with ``threads`` XGBoost threads each (seq: 1 x cores)."""

    name: str
    workers: int
    threads: int

    @property
    def is_seq(self) -> bool:
        return self.name == SEQ

    @property
    def cores(self) -> int:
        return self.workers * self.threads


def default_layouts(cores: int) -> str:
    """``seq``, all cores as single-thread workers, half as two-thread workers, one worker."""
    names = [SEQ, f"{cores}x1"]
    if cores >= 4:
        names.append(f"{cores // 2}x2")
    if cores > 1:
        names.append(f"1x{cores}")
    return ",".join(names)


def parse_layouts(text: str, cores: int) -> tuple[Layout, ...]:
    """``"seq,2x1,1x2"`` -> layouts; raises ConfigError naming the bad item."""
    layouts: list[Layout] = []
    for item in (part.strip().lower() for part in text.split(",")):
        match = _LAYOUT_RE.match(item)
        if item == SEQ:
            layout = Layout(SEQ, 1, cores)
        elif match and int(match.group(1)) > 0 and int(match.group(2)) > 0:
            layout = Layout(item, int(match.group(1)), int(match.group(2)))
        else:
            raise ConfigError(f"--layouts item {item!r} is not a layout: give seq or WxT "
                              f"(W workers x T threads, both >= 1), e.g. seq,2x1,1x2")
        if layout in layouts:
            raise ConfigError(f"--layouts names {item!r} twice: give each layout once")
        layouts.append(layout)
    return tuple(layouts)


# -- arithmetic on trial timings (pure) ----------------------------------------------------------

def busy_s(trial: dict) -> float:
    """Seconds the trial's slot was busy with it."""
    return max(trial["finished"] - trial["started"], 0.0)


def _ok(trial: dict) -> bool:
    return trial.get("loss") is not None and not trial.get("error")


def utilisation(trials: list[dict], slots: int, wall_s: float) -> float | None:
    """Busy slot-seconds over available slot-seconds (1.0: no slot ever idle)."""
    if slots <= 0 or wall_s <= 0:
        return None
    return sum(busy_s(t) for t in trials) / (slots * wall_s)


def overheads(trials: list[dict]) -> list[float]:
    """Per finished trial: slot busy time minus XGBoost train+predict time."""
    return [busy_s(t) - t["fit_s"] for t in trials if _ok(t)]


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100), linear between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def trials_per_min(n_trials: int, wall_s: float) -> float | None:
    return 60.0 * n_trials / wall_s if wall_s > 0 else None


def speedup(base_wall_s: float | None, wall_s: float | None) -> float | None:
    """How many times faster than the base (2.0: half the wall time)."""
    if not base_wall_s or not wall_s:
        return None
    return base_wall_s / wall_s


def _median(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def run_metrics(run: dict) -> dict:
    """The table's figures for one run of one layout."""
    trials, wall = run["trials"], run["wall_s"]
    spent = overheads(trials)
    losses = [t["loss"] for t in trials if _ok(t)]
    return {
        "wall_s": wall,
        "trials_per_min": trials_per_min(len(trials), wall),
        "utilisation": utilisation(trials, run["slots"], wall),
        "overhead_p50_s": percentile(spent, 50),
        "overhead_p95_s": percentile(spent, 95),
        "best_rmse": min(losses) if losses else None,
        "trials_failed": len(trials) - len(losses),
        "first_trial_s": run.get("first_trial_s"),
    }


def summarise(runs: list[dict], layouts: tuple[Layout, ...]) -> list[dict]:
    """One row per layout: medians over repeats; speedup paired with seq of the same repeat."""
    seq_wall = {r["repeat"]: r["wall_s"] for r in runs if r["layout"] == SEQ}
    rows = []
    for layout in layouts:
        mine = [r for r in runs if r["layout"] == layout.name]
        if not mine:
            continue
        metrics = [run_metrics(r) for r in mine]
        speedups = [speedup(seq_wall.get(r["repeat"]), r["wall_s"]) for r in mine]
        present = [s for s in speedups if s is not None]
        row = {"layout": layout.name, "workers": layout.workers, "threads": layout.threads,
               "cores": layout.cores, "repeats": len(mine)}
        for key in metrics[0]:
            row[key] = _round(_median([m[key] for m in metrics]))
        row["speedup_vs_seq"] = _round(_median(speedups))
        row["speedup_min"] = _round(min(present)) if present else None
        row["speedup_max"] = _round(max(present)) if present else None
        rows.append(row)
    return rows


def goal_checks(rows: list[dict], cores: int, mode: str) -> list[dict]:
    """The issue's goals against the fastest parallel layout; ``gap`` says by how much."""
    seq = next((r for r in rows if r["layout"] == SEQ), None)
    parallel = [r for r in rows if r["layout"] != SEQ and r["speedup_vs_seq"] is not None]
    if seq is None or not parallel:
        return []
    best = max(parallel, key=lambda r: r["speedup_vs_seq"])
    rmse_gap = (best["best_rmse"] - seq["best_rmse"]
                if best["best_rmse"] is not None and seq["best_rmse"] is not None else None)
    goals = [
        ("speedup_vs_seq", ">=", 2.0 if cores >= 16 else 1.4, best["speedup_vs_seq"]),
        ("utilisation", ">=", 0.9 if mode == "async" else 0.75, best["utilisation"]),
        ("overhead_p50_s", "<=", 0.25, best["overhead_p50_s"]),
        ("first_trial_s", "<=", 10.0, best["first_trial_s"]),
        ("best_rmse_minus_seq", "<=", 0.0, rmse_gap),
    ]
    checks = []
    for name, op, target, measured in goals:
        met = None if measured is None else (measured >= target if op == ">=" else measured <= target)
        checks.append({"goal": name, "layout": best["layout"], "target": f"{op} {target:g}",
                       "measured": _round(measured), "met": met,
                       "gap": None if measured is None else _round(measured - target)})
    return checks


# -- settings ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """Everything ``taxi-hpo bench`` was asked to do, validated when built."""

    layouts: tuple[Layout, ...]
    trials: int = 8
    rounds: int = 15
    max_depth: int = 20
    seed: int = 42
    repeats: int = 1
    mode: str = "async"
    out: str = "bench-out"
    train: str = "2021-01"
    valid: str = "2021-02"
    data_dir: str = "./data"
    tracking_uri: str | None = None

    def __post_init__(self):
        for flag, value in (("--trials", self.trials), ("--repeats", self.repeats), ("--rounds", self.rounds)):
            if value <= 0:
                raise ConfigError(f"{flag} must be a positive whole number, got {value}")
        if self.mode not in MODES:
            raise ConfigError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not self.layouts:
            raise ConfigError("--layouts is empty: give e.g. seq,2x1,1x2")
        for layout in self.layouts:
            self.run_config(layout)  # the search's own checks (depth, ...) before anything runs

    def run_config(self, layout: Layout):
        from taxi_hpo.config import RunConfig

        return RunConfig(train=self.train, valid=self.valid, data_dir=self.data_dir, trials=self.trials,
                         workers=layout.workers, threads_per_worker=layout.threads, mode=self.mode,
                         seed=self.seed, rounds=self.rounds, max_depth=self.max_depth,
                         tracking_uri=self.tracking_uri, experiment=EXPERIMENT, register=False)

    def describe(self) -> dict:
        return {"layouts": [layout.name for layout in self.layouts], "trials": self.trials, "rounds": self.rounds,
                "max_depth": self.max_depth, "seed": self.seed, "repeats": self.repeats, "mode": self.mode,
                "train": self.train, "valid": self.valid, "experiment": EXPERIMENT}


def machine_facts() -> dict:
    """Cores, CPU, memory, versions and load: what a reader needs to weigh the figures."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cores": os.cpu_count(), "cores_usable": usable_cores(), "cpu": _cpu_model(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
        if hasattr(os, "sysconf") else None,
        "platform": platform.platform(), "python": platform.python_version(), "packages": versions,
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# -- the runs ------------------------------------------------------------------------------------

TRIAL_KEYS = ("trial_id", "loss", "started", "finished", "fit_s", "worker", "error", "params")


def _trial_record(values: dict) -> dict:
    """What bench.json keeps of a trial: its timings, loss, slot and point."""
    return {key: values.get(key) for key in TRIAL_KEYS}


def run_seq(cfg: BenchConfig, layout: Layout, prepared, repeat: int) -> dict:
    """The reference search in this process, each trial logged like a parallel one."""
    from taxi_hpo import features, models, tracking, trials
    from taxi_hpo.search import TrialOutcome, reference_space
    from taxi_hpo.search.baseline import run_reference

    run_cfg = cfg.run_config(layout)
    called = time.time()
    uri = run_cfg.resolved_tracking_uri
    experiment_id = tracking.prepare_store(uri, EXPERIMENT, Path(run_cfg.workdir) / "mlartifacts")
    parent = tracking.start_parent_run(uri, experiment_id, {**cfg.describe(), "layout": SEQ, "repeat": repeat,
                                                            "nthread": layout.threads},
                                       {"taxi_hpo.bench": "seq"}, run_name="bench-seq")
    ctx = tracking.TrackingContext(uri, experiment_id, parent, features.preprocessor_sha256(prepared.preprocessor))
    models.matrices(prepared)  # as the reference pipeline: the DMatrix pair is built before fmin

    def evaluate(trial_id: int, params: dict) -> TrialOutcome:
        try:
            return TrialOutcome(**trials.run_trial(trial_id, params, prepared, ctx, cfg.rounds, layout.threads))
        except Exception as exc:  # noqa: BLE001 - a failed trial is a result, as in the parallel search
            return TrialOutcome(trial_id, params, None, error=f"{type(exc).__name__}: {exc}")

    status, metrics = "FAILED", {}
    try:
        start = time.time()
        outcomes = run_reference(reference_space(cfg.max_depth), evaluate, cfg.trials, cfg.seed)
        wall = time.time() - start
        losses = [o.loss for o in outcomes if o.ok]
        metrics = {"search_wall_s": wall, **({"best_rmse": min(losses)} if losses else {})}
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracking.end_run(uri, parent, status, metrics=metrics)
    records = [_trial_record(dataclasses.asdict(o)) for o in outcomes]
    return {"layout": SEQ, "repeat": repeat, "slots": 1, "cores": layout.cores, "wall_s": round(wall, 3),
            "search_started": start,
            "first_trial_s": _first_start(records, called), "parent_run_id": parent, "trials": records}


def run_parallel(cfg: BenchConfig, layout: Layout, repeat: int) -> dict:
    """One search flow on a fresh LocalCluster of ``layout``."""
    from taxi_hpo import flows

    called = time.time()
    summary = flows.execute(cfg.run_config(layout))
    params = summary.get("trial_params") or [None] * len(summary["trials"])
    records = [_trial_record({**t, "params": p}) for t, p in zip(summary["trials"], params)]
    return {"layout": layout.name, "repeat": repeat, "slots": summary["slots"], "cores": layout.cores,
            "wall_s": summary["search_wall_s"], "flow_wall_s": summary["wall_s"],
            "search_started": summary.get("search_started"),
            "first_trial_s": _first_start(records, called), "parent_run_id": summary["parent_run_id"],
            "trials": records}


def _first_start(records: list[dict], called: float) -> float | None:
    starts = [r["started"] for r in records if r["started"]]
    return round(min(starts) - called, 3) if starts else None


def run_bench(cfg: BenchConfig, log=None) -> dict:
    """Run every layout ``cfg.repeats`` times, alternating; write bench.json and the pictures."""
    from taxi_hpo import data as data_mod
    from taxi_hpo import flows, preflight
    from taxi_hpo.prefect_api import prefect_api

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cores = usable_cores()
    result = {"machine": machine_facts(), "settings": cfg.describe(), "runs": []}
    preflight.check(cfg.run_config(cfg.layouts[0]))
    with prefect_api():
        prepared = None
        if any(layout.is_seq for layout in cfg.layouts):
            train = data_mod.resolve(cfg.train, Path(cfg.data_dir)).path
            valid = data_mod.resolve(cfg.valid, Path(cfg.data_dir)).path
            prepared = flows.preprocess(str(train), str(valid))["data"]  # the flows' cached copy
        for repeat in range(cfg.repeats):
            for layout in cfg.layouts:
                log(f"bench: repeat {repeat + 1}/{cfg.repeats} {layout.name} ...")
                run = run_seq(cfg, layout, prepared, repeat) if layout.is_seq else run_parallel(cfg, layout, repeat)
                result["runs"].append(run)
                best = run_metrics(run)["best_rmse"]
                log(f"bench: repeat {repeat + 1}/{cfg.repeats} {layout.name}: search {run['wall_s']:.1f} s, "
                    f"best RMSE {best if best is None else round(best, 4)}")
                _write_json(out / "bench.json", result)  # partial results survive an interrupt
    result["layouts"] = summarise(result["runs"], cfg.layouts)
    result["goals"] = goal_checks(result["layouts"], cores, cfg.mode)
    _write_json(out / "bench.json", result)
    from taxi_hpo.bench_plots import plot_speedup, plot_timeline

    plot_speedup(result, out / "speedup.png")
    plot_timeline(result, out / "timeline.png")
    return result


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, path)


def add_parser(sub, add_search_flags) -> None:
    cores = usable_cores()
    p = sub.add_parser("bench", help="benchmark layouts against the sequential reference search",
                       description=__doc__)
    add_search_flags(p)
    p.add_argument("--layouts", default=default_layouts(cores),
                   help=f"comma-separated: seq (the reference, all cores) or WxT (W workers x T threads); "
                        f"default here {default_layouts(cores)}")
    p.add_argument("--trials", type=int, default=8, help="trials per layout and repeat (default 8)")
    p.add_argument("--repeats", type=int, default=1, help="runs of each layout, alternating (default 1)")
    p.add_argument("--mode", choices=MODES, default="async", help="scheduler mode of the parallel layouts")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default sqlite:///$PWD/mlflow.db)")
    p.add_argument("--out", default="bench-out", help="folder for bench.json, speedup.png, timeline.png")
    p.add_argument("--json", action="store_true", help="print the table as one JSON object on stdout")


def main(args: argparse.Namespace) -> int:
    cores = usable_cores()
    cfg = BenchConfig(layouts=parse_layouts(args.layouts, cores), trials=args.trials, rounds=args.rounds,
                      max_depth=args.max_depth, seed=args.seed, repeats=args.repeats, mode=args.mode,
                      out=args.out, train=args.train, valid=args.valid, data_dir=args.data_dir,
                      tracking_uri=args.tracking_uri)
    result = run_bench(cfg)
    if args.json:
        shown = {k: result[k] for k in ("machine", "settings", "layouts", "goals")}
        print(json.dumps({**shown, "out": str(Path(cfg.out).resolve())}, default=str))
    else:
        print(format_table(result))
        print(f"wrote {Path(cfg.out) / 'bench.json'}, speedup.png, timeline.png")
    return 0


COLUMNS = ("layout", "wall_s", "trials_per_min", "speedup_vs_seq", "utilisation", "overhead_p50_s",
           "overhead_p95_s", "best_rmse")


def format_table(result: dict) -> str:
    """The per-layout table as aligned text, then the goals that were missed."""
    cells = [list(COLUMNS)] + [["-" if r[c] is None else str(r[c]) for c in COLUMNS] for r in result["layouts"]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    for goal in result["goals"]:
        if goal["met"] is False:
            lines.append(f"goal missed: {goal['goal']} {goal['target']} on {goal['layout']}: "
                         f"measured {goal['measured']} (gap {goal['gap']})")
    return "\n".join(lines)
