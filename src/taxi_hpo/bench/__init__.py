"""``taxi-hpo bench``: the reference search against parallel layouts, same trials, same data.

A layout ``WxT`` is W Dask worker processes, each trial starting on T XGBoost threads, with
elastic threads (idle cores go to running trials; ``WxT-fixed``: exactly T); ``default`` is the
layout ``taxi-hpo run`` chooses on this machine; ``seq`` is the reference search inside the
project (one process, ``fmin``, XGBoost on every core, each trial logged like a parallel one);
``script`` is the reference pipeline's own script (``reference_script.py``: no tracking) as a
command of its own. All layouts run the same budget in one invocation, alternating across
repeats so that a noisy machine hurts them alike. The arithmetic comes first as small pure
functions in ``bench_metrics``; here the layouts, the settings, the runs (``bench_runs``), the command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

from taxi_hpo.bench.metrics import SCRIPT, SEQ, goal_checks, run_metrics, summarise
from taxi_hpo.config import parse_wxt
from taxi_hpo.core.machine import usable_cores
from taxi_hpo.errors import ConfigError
from taxi_hpo.search.promotion import FIDELITIES
from taxi_hpo.search.pruning import RULES as PRUNE_RULES
from taxi_hpo.search.scheduler import MODES

DEFAULT = "default"
SCRIPT_BUDGET = "script"  # --timeout script: the script's own time is the others' budget
EXPERIMENT = "taxi-hpo-bench"
PACKAGES = (
    "taxi-hpo",
    "xgboost",
    "xgboost-cpu",
    "hyperopt",
    "prefect",
    "prefect-dask",
    "dask",
    "distributed",
    "mlflow",
    "numpy",
    "scikit-learn",
    "matplotlib",
)


# -- layouts -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layout:
    """How trials run: ``workers`` slots, each trial starting on ``threads`` XGBoost threads.

    ``seq`` and ``script`` are one slot on every core. ``elastic``: idle cores go to running
    trials. ``default``: the layout ``taxi-hpo run`` picks here.
    """

    name: str
    workers: int
    threads: int
    elastic: bool = True
    default: bool = False

    @property
    def is_seq(self) -> bool:
        """Whether this is ``seq``, the reference search inside the project."""
        return self.name == SEQ

    @property
    def is_script(self) -> bool:
        """Whether this is ``script``, the reference pipeline's own script."""
        return self.name == SCRIPT

    @property
    def is_parallel(self) -> bool:
        """Whether trials run on Dask workers: neither ``seq`` nor ``script``."""
        return not (self.is_seq or self.is_script)

    @property
    def cores(self) -> int:
        """The cores trials start on: ``workers`` times ``threads``."""
        return self.workers * self.threads


def default_layout(cores: int) -> Layout:
    """What ``taxi-hpo run`` does with no layout flags: a one-thread worker per core, elastic."""
    from taxi_hpo.config import default_workers

    workers = default_workers(1) if cores == usable_cores() else cores
    return Layout(f"{workers}x1", workers, 1, elastic=True, default=True)


def default_layouts(cores: int) -> str:
    """The references, the default layout with and without elastic threads, then fewer workers."""
    names = [SCRIPT, SEQ, DEFAULT, f"{cores}x1-fixed"]
    if cores >= 4:
        names.append(f"{cores // 2}x2")
    if cores > 1:
        names.append(f"1x{cores}")
    return ",".join(names)


def parse_layouts(text: str, cores: int) -> tuple[Layout, ...]:
    """``"script,seq,default,2x1-fixed,1x2"`` -> layouts; raises ConfigError naming the bad item."""
    layouts: list[Layout] = []
    for item in (part.strip().lower() for part in text.split(",")):
        wxt = parse_wxt(item)
        if item in (SEQ, SCRIPT):
            layout = Layout(item, 1, cores)
        elif item == DEFAULT:
            layout = default_layout(cores)
        elif wxt is not None:
            layout = Layout(item, wxt[0], wxt[1], elastic=wxt[2])
        else:
            raise ConfigError(
                f"--layouts item {item!r} is not a layout: give seq, script, default or WxT[-fixed] "
                f"(W workers x T threads, both >= 1), e.g. script,seq,default,2x1-fixed"
            )
        same = [i for i, known in enumerate(layouts) if known.name == layout.name]
        if same and not (layout.default or layouts[same[0]].default):
            raise ConfigError(f"--layouts names {item!r} twice: give each layout once")
        if same:  # "default" and the WxT it stands for: one layout, marked default
            layouts[same[0]] = dataclasses.replace(layouts[same[0]], default=True)
            continue
        layouts.append(layout)
    return tuple(layouts)


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
    whole: bool = False  # parallel layouts as whole `taxi-hpo run` commands (and `command_s`)
    experiment: str = EXPERIMENT
    prune: str = "none"  # every layout but the script (the reference never prunes)
    target: float | None = None  # RMSE for time_to_target_s (default: the reference's final best)
    prune_trials: int | None = None  # trials of the pruned or multi-fidelity layouts (default: trials)
    fidelity: str = "none"  # a ladder for the parallel layouts (search.multifidelity)
    # the search budget of every layout but the script: seconds, or SCRIPT_BUDGET (the script's
    # whole command, or its search where not --whole, in the same repeat)
    timeout: float | str | None = None

    def __post_init__(self):
        for flag, value in (
            ("--trials", self.trials),
            ("--repeats", self.repeats),
            ("--rounds", self.rounds),
            ("--prune-trials", 1 if self.prune_trials is None else self.prune_trials),
        ):
            if value <= 0:
                raise ConfigError(f"{flag} must be a positive whole number, got {value}")
        if self.mode not in MODES:
            raise ConfigError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not self.layouts:
            raise ConfigError("--layouts is empty: give e.g. seq,2x1,1x2")
        if self.prune_trials and self.prune == "none" and self.fidelity == "none":
            raise ConfigError(
                "--prune-trials needs --prune median or asha, or --fidelity (it sizes those searches)"
            )
        if self.fidelity != "none" and any(layout.name == SEQ for layout in self.layouts):
            raise ConfigError(
                "--fidelity runs on the parallel layouts only (seq is the reference's own fmin loop): "
                "drop seq from --layouts, the script is the reference"
            )
        if self.timeout == SCRIPT_BUDGET and not self.layouts[0].is_script:
            raise ConfigError(
                "--timeout script needs the script first in --layouts (e.g. script,default): "
                "its time in each repeat is the others' budget"
            )
        fixed = None if self.timeout == SCRIPT_BUDGET else self.timeout
        for layout in self.layouts:
            self.run_config(layout, fixed)  # the search's own checks (depth, timeout, ...) first

    def run_config(self, layout: Layout, timeout_s: float | None = None):
        """The search settings of ``layout``'s runs in this process: its workers and threads, this
        bench's trials, rounds, data and tracking, no registration and no report (``--whole``
        commands do both, as a user's); ``timeout_s``: the search's budget (``--timeout``)."""
        from taxi_hpo.config import RunConfig

        return RunConfig(
            train=self.train,
            valid=self.valid,
            data_dir=self.data_dir,
            trials=self.layout_trials,
            workers=layout.workers,
            threads_per_worker=layout.threads,
            elastic_threads=layout.elastic,
            mode=self.mode,
            seed=self.seed,
            rounds=self.rounds,
            max_depth=self.max_depth,
            tracking_uri=self.tracking_uri,
            experiment=self.experiment,
            register=False,
            report=False,
            prune=self.prune,
            fidelity=self.fidelity,
            timeout_s=timeout_s,
        )

    def budget_s(self, runs: list[dict], repeat: int) -> float | None:
        """The search budget of this repeat's layouts: ``--timeout`` in seconds, or the time of
        this repeat's script (its whole command with ``--whole``, else its search)."""
        if self.timeout != SCRIPT_BUDGET:
            return self.timeout
        script = next(r for r in runs if r["repeat"] == repeat and r["layout"] == SCRIPT)
        return script["command_s"] if self.whole else script["wall_s"]

    @property
    def layout_trials(self) -> int:
        """Trials of every layout but the script: ``prune_trials`` when pruning, as a pruned search
        that runs more, cheaper trials in the time of the reference's."""
        screened = self.prune != "none" or self.fidelity != "none"
        return self.prune_trials if screened and self.prune_trials else self.trials

    def describe(self) -> dict:
        """The settings as plain data for bench.json, with the name of the default layout (or
        None)."""
        return {
            "layouts": [layout.name for layout in self.layouts],
            "trials": self.trials,
            "rounds": self.rounds,
            "max_depth": self.max_depth,
            "seed": self.seed,
            "repeats": self.repeats,
            "mode": self.mode,
            "train": self.train,
            "valid": self.valid,
            "experiment": self.experiment,
            "whole": self.whole,
            "prune": self.prune,
            "target": self.target,
            "prune_trials": self.prune_trials,
            "fidelity": self.fidelity,
            "timeout": self.timeout,
            "default_layout": next((layout.name for layout in self.layouts if layout.default), None),
        }


def machine_facts() -> dict:
    """Cores, CPU, memory, versions and load: what a reader needs to weigh the figures."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cores": os.cpu_count(),
        "cores_usable": usable_cores(),
        "cpu": _cpu_model(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
        if hasattr(os, "sysconf")
        else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": versions,
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


def run_bench(cfg: BenchConfig, log=None) -> dict:
    """Run every layout ``cfg.repeats`` times, alternating; write bench.json and the pictures."""
    from taxi_hpo import flows, preflight
    from taxi_hpo.bench import runs as bench_runs
    from taxi_hpo.core import data as data_mod
    from taxi_hpo.prefect_api import prefect_api

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cores = usable_cores()
    result = {"machine": machine_facts(), "settings": cfg.describe(), "runs": []}
    preflight.check(cfg.run_config(cfg.layouts[0]))
    train = data_mod.resolve(cfg.train, Path(cfg.data_dir)).path
    valid = data_mod.resolve(cfg.valid, Path(cfg.data_dir)).path
    with prefect_api(), bench_runs.CpuSampler() as cpu:
        prepared = None
        if any(layout.is_seq for layout in cfg.layouts):
            prepared = flows.preprocess(str(train), str(valid))["data"]  # the flows' cached copy
        for repeat in range(cfg.repeats):
            for layout in cfg.layouts:
                log(f"bench: repeat {repeat + 1}/{cfg.repeats} {layout.name} ...")
                if layout.is_seq:
                    run = bench_runs.run_seq(cfg, layout, prepared, repeat)
                elif layout.is_script:
                    run = bench_runs.run_script(cfg, layout, repeat, train, valid)
                elif cfg.whole:
                    run = bench_runs.run_command(cfg, layout, repeat, cfg.budget_s(result["runs"], repeat))
                else:
                    run = bench_runs.run_parallel(cfg, layout, repeat, cfg.budget_s(result["runs"], repeat))
                if run.get("search_started"):
                    run["cpu_s"] = cpu.between(run["search_started"], run["search_started"] + run["wall_s"])
                result["runs"].append(run)
                best = run_metrics(run)["best_rmse"]
                whole = f", whole command {run['command_s']:.1f} s" if run.get("command_s") else ""
                log(
                    f"bench: repeat {repeat + 1}/{cfg.repeats} {layout.name}: search "
                    f"{run['wall_s']:.1f} s{whole}, "
                    f"best RMSE {best if best is None else round(best, 4)}"
                )
                _write_json(out / "bench.json", result)  # partial results survive an interrupt
    result["layouts"] = summarise(result["runs"], cfg.layouts, cfg.target)
    result["goals"] = goal_checks(result["layouts"], cores, cfg.mode)
    _write_json(out / "bench.json", result)
    from taxi_hpo.bench.plots import plot_speedup, plot_timeline

    plot_speedup(result, out / "speedup.png")
    plot_timeline(result, out / "timeline.png")
    return result


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, path)


def add_parser(sub, add_search_flags) -> None:
    """Add ``taxi-hpo bench`` and its flags to the subparsers ``sub``; ``add_search_flags`` adds the
    flags it shares with ``run``."""
    cores = usable_cores()
    p = sub.add_parser(
        "bench", help="benchmark layouts against the sequential reference search", description=__doc__
    )
    add_search_flags(p)
    p.add_argument(
        "--layouts",
        default=default_layouts(cores),
        help=f"comma-separated: script (the reference pipeline's own script, all cores), seq (the "
        f"reference search inside taxi-hpo), default (what `taxi-hpo run` picks), WxT (W workers "
        f"x T threads, elastic) or WxT-fixed; default here {default_layouts(cores)}",
    )
    p.add_argument(
        "--prune",
        choices=PRUNE_RULES,
        default="none",
        help="pruning for every layout but the script (the unpruned reference); default none",
    )
    p.add_argument(
        "--fidelity",
        choices=FIDELITIES,
        default="none",
        help="the parallel layouts screen with cheap fits and promote (taxi-hpo run --fidelity); "
        "not with seq; default none",
    )
    p.add_argument(
        "--prune-trials",
        type=int,
        default=None,
        help="trials (fits) of the pruned or --fidelity layouts (default: --trials); the script keeps "
        "--trials, so speedup_to_target says how soon a longer, cheaper search reaches its best",
    )
    p.add_argument(
        "--target",
        type=float,
        default=None,
        help="RMSE for time_to_target_s (default: the script's, else seq's, final best RMSE)",
    )
    p.add_argument(
        "--whole",
        action="store_true",
        help="run parallel layouts as whole `taxi-hpo run` commands (own Prefect server, cluster, "
        "baseline and registration), timed from outside like the script",
    )
    p.add_argument(
        "--timeout",
        default=None,
        help="the search budget of every layout but the script (taxi-hpo run --timeout): a duration "
        "(90s, 3m), or `script`: the script's time in the same repeat (its whole command with "
        "--whole), the script listed first; give --prune-trials or --trials enough for it",
    )
    p.add_argument("--trials", type=int, default=8, help="trials per layout and repeat (default 8)")
    p.add_argument("--repeats", type=int, default=1, help="runs of each layout, alternating (default 1)")
    p.add_argument("--mode", choices=MODES, default="async", help="scheduler mode of the parallel layouts")
    p.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking URI (default sqlite:///$PWD/mlflow.db)"
    )
    p.add_argument("--out", default="bench-out", help="folder for bench.json, speedup.png, timeline.png")
    p.add_argument("--json", action="store_true", help="print the table as one JSON object on stdout")


def main(args: argparse.Namespace) -> int:
    """Run ``taxi-hpo bench`` with the parsed ``args`` and print the table (``--json``: one JSON
    object); exit status 0."""
    cores = usable_cores()
    cfg = BenchConfig(
        layouts=parse_layouts(args.layouts, cores),
        trials=args.trials,
        rounds=args.rounds,
        max_depth=args.max_depth,
        seed=args.seed,
        repeats=args.repeats,
        mode=args.mode,
        out=args.out,
        train=args.train,
        valid=args.valid,
        data_dir=args.data_dir,
        tracking_uri=args.tracking_uri,
        whole=args.whole,
        prune=args.prune,
        target=args.target,
        prune_trials=args.prune_trials,
        fidelity=args.fidelity,
        timeout=_timeout(args.timeout),
    )
    result = run_bench(cfg)
    if args.json:
        shown = {k: result[k] for k in ("machine", "settings", "layouts", "goals")}
        print(json.dumps({**shown, "out": str(Path(cfg.out).resolve())}, default=str))
    else:
        print(format_table(result))
        print(f"wrote {Path(cfg.out) / 'bench.json'}, speedup.png, timeline.png")
    return 0


def _timeout(text: str | None) -> float | str | None:
    if text is None:
        return None
    if text.strip().lower() == SCRIPT_BUDGET:
        return SCRIPT_BUDGET
    from taxi_hpo.config import parse_duration

    return parse_duration(text)


COLUMNS = (
    "layout",
    "wall_s",
    "command_s",
    "speedup_vs_seq",
    "speedup_vs_script",
    "utilisation",
    "core_utilisation",
    "cpu_beside_trials",
    "overhead_p50_s",
    "best_rmse",
    "time_to_target_s",
    "speedup_to_target",
    "command_time_to_target_s",
    "command_speedup_to_target",
)


def format_table(result: dict) -> str:
    """The per-layout table as aligned text, then the goals that were missed."""

    def cell(row: dict, column: str) -> str:
        value = row.get(column)
        text = "-" if value is None else str(value)
        return text + " (default)" if column == "layout" and row.get("default") else text

    cells = [list(COLUMNS)] + [[cell(r, c) for c in COLUMNS] for r in result["layouts"]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    for goal in result["goals"]:
        if goal["met"] is False:
            lines.append(
                f"goal missed: {goal['goal']} {goal['target']} on {goal['layout']}: "
                f"measured {goal['measured']} (gap {goal['gap']})"
            )
    return "\n".join(lines)
