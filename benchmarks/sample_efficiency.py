"""Sample efficiency of TPE with k trials in flight: best validation RMSE after n trials.

Trials run one at a time in this process through the real scheduler (``search.run_search``)
and complete in FIFO order, so k in flight is exactly TPE with k-1 pending liars, without
needing k cores. Fits are cached by parameters within a seed: during TPE's random start-up
every k suggests the same points, and XGBoost is deterministic for fixed parameters.

    .venv/bin/python benchmarks/sample_efficiency.py --seeds 5 --trials 32 --rounds 15 \\
        --max-depth 20 --in-flight 1,2,4,8 --out benchmarks/out/sample-efficiency

Writes ``results.json`` (every loss; an interrupted study resumes from it),
``sample_efficiency.md`` (the table) and ``sample_efficiency.png`` (the curves) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import deque
from pathlib import Path
from typing import Callable

from taxi_hpo.search import TPESearcher, TrialOutcome, reference_space, run_search
from taxi_hpo.search.tpe import DEFAULT_STARTUP

Evaluate = Callable[[int, dict], TrialOutcome]


class FifoRunner:
    """A TrialRunner that evaluates trials in this process, oldest submission first."""

    def __init__(self, evaluate: Evaluate):
        self._evaluate = evaluate
        self._queue: deque[tuple[int, dict]] = deque()
        self._done: dict[int, TrialOutcome] = {}

    def submit(self, trial_id: int, params: dict, priority: float) -> int:
        self._queue.append((trial_id, params))
        return trial_id

    def wait_any(self, handles):
        trial_id, params = self._queue.popleft()
        self._done[trial_id] = self._evaluate(trial_id, params)
        return [trial_id]

    def outcome(self, handle: int) -> TrialOutcome:
        return self._done.pop(handle)


def losses_in_flight(evaluate: Evaluate, in_flight: int, n_trials: int, seed: int, max_depth: int,
                     mode: str = "async", startup: int = DEFAULT_STARTUP) -> list[float | None]:
    """Validation losses in trial order of one search with ``in_flight`` trials pending.

    Start-up as the parallel search sets it: at least ``in_flight`` random trials.
    """
    searcher = TPESearcher(reference_space(max_depth), seed, max(startup, in_flight))
    outcomes = run_search(searcher, FifoRunner(evaluate), n_trials, mode=mode, in_flight=in_flight)
    return [o.loss for o in outcomes]


def best_so_far(losses: list[float | None]) -> list[float | None]:
    """Running minimum; None until the first finished trial."""
    best, curve = None, []
    for loss in losses:
        if loss is not None and (best is None or loss < best):
            best = loss
        curve.append(best)
    return curve


def checkpoints(n_trials: int) -> list[int]:
    """Powers of two from 4 up to the budget, and the budget itself."""
    points = [n for n in (4, 8, 16, 32, 64, 128, 256) if n < n_trials]
    return points + [n_trials]


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def markdown_table(curves: dict[int, list[list[float | None]]], n_trials: int) -> str:
    """Rows: k in flight; cells: mean ± sd over seeds of the best RMSE after n trials."""
    points = checkpoints(n_trials)
    header = ["in flight"] + [f"n = {n}" for n in points] + [f"vs 1 at n = {n_trials}"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    final = {k: mean_sd([c[n_trials - 1] for c in runs if c[n_trials - 1] is not None])[0]
             for k, runs in curves.items() if any(c[n_trials - 1] is not None for c in runs)}
    for k, runs in sorted(curves.items()):
        cells = [str(k)]
        for n in points:
            present = [c[n - 1] for c in runs if c[n - 1] is not None]
            cells.append("{:.4f} ± {:.4f}".format(*mean_sd(present)) if present else "-")
        base = final.get(1)
        cells.append(f"{100 * (final[k] - base) / base:+.2f} %" if base and k in final else "-")
        lines.append("| " + " | ".join(cells) + " |")
    seeds = len(next(iter(curves.values()), []))
    lines.append(f"\nBest validation RMSE after n trials, mean ± sd over {seeds} seed(s).")
    return "\n".join(lines) + "\n"


def plot(curves: dict[int, list[list[float | None]]], caption: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for k, runs in sorted(curves.items()):
        n_trials = len(runs[0])
        points = []  # (n, mean, sd) where some seed has finished a trial
        for i in range(n_trials):
            present = [c[i] for c in runs if c[i] is not None]
            if present:
                points.append((i + 1, *mean_sd(present)))
        xs = [n for n, _, _ in points]
        line, = ax.plot(xs, [m for _, m, _ in points], label=f"{k} in flight", drawstyle="steps-post")
        ax.fill_between(xs, [m - sd for _, m, sd in points], [m + sd for _, m, sd in points],
                        color=line.get_color(), alpha=0.12, step="post")
    ax.set_xlabel("trials finished (n)")
    ax.set_ylabel("best validation RMSE so far (mean ± sd over seeds)")
    ax.set_title(caption, fontsize=8)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- the study on the real data --------------------------------------------------------------------

def xgboost_evaluator(prepared, rounds: int, nthread: int, cache: dict) -> Evaluate:
    """Fit one trial with ``models.fit_xgboost``; ``cache`` maps parameters to loss."""
    from taxi_hpo import models
    from taxi_hpo.search import xgb_params

    def evaluate(trial_id: int, params: dict) -> TrialOutcome:
        key = json.dumps(params, sort_keys=True)
        if key not in cache:
            try:
                cache[key] = models.fit_xgboost(xgb_params(params, nthread), prepared, rounds).rmse_valid
            except Exception as exc:  # noqa: BLE001 - a failed trial is a result
                print(f"trial {trial_id} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                cache[key] = None
        return TrialOutcome(trial_id, params, cache[key])

    return evaluate


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--in-flight", default="1,2,4,8", help="comma-separated trials in flight (default 1,2,4,8)")
    p.add_argument("--seeds", type=int, default=5, help="number of seeds, from --first-seed on (default 5)")
    p.add_argument("--first-seed", type=int, default=42)
    p.add_argument("--trials", type=int, default=32, help="trials per search (default 32)")
    p.add_argument("--rounds", type=int, default=15, help="XGBoost boosting rounds (default 15)")
    p.add_argument("--max-depth", type=int, default=20, help="upper bound of max_depth (default 20)")
    p.add_argument("--mode", choices=("async", "batch"), default="async")
    p.add_argument("--startup", type=int, default=DEFAULT_STARTUP,
                   help=f"random start-up trials before TPE models (default {DEFAULT_STARTUP}, as the search)")
    p.add_argument("--nthread", type=int, default=os.cpu_count() or 1, help="XGBoost threads (default: all cores)")
    p.add_argument("--train", default="2021-01")
    p.add_argument("--valid", default="2021-02")
    p.add_argument("--data-dir", default=os.environ.get("TAXI_HPO_DATA_DIR", "./data"))
    p.add_argument("--out", default="benchmarks/out/sample-efficiency")
    args = p.parse_args(argv)
    try:
        args.in_flight = sorted({int(k) for k in args.in_flight.split(",")})
    except ValueError:
        p.error(f"--in-flight {args.in_flight!r}: give whole numbers, e.g. 1,2,4,8")
    if min(args.in_flight) < 1 or min(args.seeds, args.trials, args.rounds, args.startup) < 1:
        p.error("--in-flight, --seeds, --trials, --rounds and --startup must be >= 1")
    return args


def _load(args):
    from taxi_hpo import data, features

    months = [data.resolve(spec, Path(args.data_dir)) for spec in (args.train, args.valid)]
    return features.prepare_data(data.load(months[0].path), data.load(months[1].path))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in ("trials", "rounds", "max_depth", "mode", "startup", "train", "valid")}
    results_path = out / "results.json"
    saved = json.loads(results_path.read_text()) if results_path.exists() else {}
    if saved.get("settings") != settings:
        saved = {"settings": settings, "losses": {}, "fits": {}}
    prepared = _load(args)
    started = time.time()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        cache = saved["fits"].setdefault(str(seed), {})
        evaluate = xgboost_evaluator(prepared, args.rounds, args.nthread, cache)
        for k in args.in_flight:
            key = f"{k}/{seed}"
            if key not in saved["losses"]:
                saved["losses"][key] = losses_in_flight(evaluate, k, args.trials, seed, args.max_depth, args.mode,
                                                           args.startup)
                tmp = results_path.with_suffix(".tmp")
                tmp.write_text(json.dumps(saved))
                os.replace(tmp, results_path)
            best = best_so_far(saved["losses"][key])[-1]
            print(f"seed {seed} in flight {k}: best {best} ({time.time() - started:.0f} s)", file=sys.stderr)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    curves = {k: [best_so_far(saved["losses"][f"{k}/{s}"]) for s in seeds] for k in args.in_flight}
    (out / "sample_efficiency.md").write_text(markdown_table(curves, args.trials))
    caption = (f"{args.trials} trials, {args.rounds} rounds, max_depth <= {args.max_depth}, {args.mode}, "
               f"start-up {args.startup}, seeds {args.first_seed}..{args.first_seed + args.seeds - 1}, "
               "FIFO completion")
    plot(curves, caption, out / "sample_efficiency.png")
    print((out / "sample_efficiency.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
