"""Sample efficiency of TPE with k trials in flight, and with pruning: best RMSE after n trials.

Trials run one at a time in this process through the real scheduler (``search.run_search``)
and complete in FIFO order, so k in flight is exactly TPE with k-1 pending liars, without
needing k cores. Fits are cached by parameters within a seed: during TPE's random start-up
every k suggests the same points, and XGBoost is deterministic for fixed parameters.

With ``--prune none,asha,median`` each search also runs under each pruning rule. A point is
fitted once, all its rounds, with its validation RMSE recorded at the checkpoints; a pruned
run of it is that curve cut at the first checkpoint above the thresholds the rule gave the
trial when it was submitted (the real ``Pruner``, fed in the scheduler's order): the same
decision the trial would have taken, its loss the RMSE it had reached there. The boosting rounds
each search ran are counted, so a rule's saving and its cost in RMSE sit side by side.

    .venv/bin/python benchmarks/sample_efficiency.py --seeds 5 --trials 32 --rounds 15 \\
        --max-depth 20 --in-flight 1,2,4,8 --out benchmarks/out/sample-efficiency
    .venv/bin/python benchmarks/sample_efficiency.py --seeds 5 --trials 100 --rounds 30 \\
        --max-depth 40 --in-flight 2 --prune none,asha,median --out benchmarks/out/pruning

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
from collections.abc import Callable
from pathlib import Path

from taxi_hpo.search import TPESearcher, TrialOutcome, reference_space, run_search
from taxi_hpo.search.tpe import DEFAULT_STARTUP

Evaluate = Callable[[int, dict], TrialOutcome]


class FifoRunner:
    """A TrialRunner that evaluates trials in this process, oldest submission first.

    ``thresholds`` (pruning) is asked when a trial is submitted, as the real runner asks.
    """

    def __init__(self, evaluate: Evaluate, thresholds: Callable[[], dict] | None = None):
        self._evaluate = evaluate
        self._thresholds = thresholds
        self._queue: deque[tuple[int, dict, dict | None]] = deque()
        self._done: dict[int, TrialOutcome] = {}

    def submit(self, trial_id: int, params: dict, priority: float) -> int:
        self._queue.append((trial_id, params, self._thresholds() if self._thresholds else None))
        return trial_id

    def wait_any(self, handles, timeout=None):
        trial_id, params, thresholds = self._queue.popleft()
        self._done[trial_id] = (
            self._evaluate(trial_id, params, thresholds)
            if self._thresholds
            else self._evaluate(trial_id, params)
        )
        return [trial_id]

    def outcome(self, handle: int) -> TrialOutcome:
        return self._done.pop(handle)


def losses_in_flight(
    evaluate: Evaluate,
    in_flight: int,
    n_trials: int,
    seed: int,
    max_depth: int,
    mode: str = "async",
    startup: int = DEFAULT_STARTUP,
    pruner=None,
) -> list[float | None]:
    """Validation losses in trial order of one search with ``in_flight`` trials pending.

    Start-up as the parallel search sets it: at least ``in_flight`` random trials. With a
    ``pruner`` (``search.pruning.Pruner``), ``evaluate`` takes the trial's thresholds too, and a
    pruned trial's loss is None here (its RMSE is of an unfinished model; TPE still learns it).
    """
    return [
        None if o.pruned_at else o.loss
        for o in outcomes_in_flight(evaluate, in_flight, n_trials, seed, max_depth, mode, startup, pruner)
    ]


def outcomes_in_flight(
    evaluate: Evaluate,
    in_flight: int,
    n_trials: int,
    seed: int,
    max_depth: int,
    mode: str = "async",
    startup: int = DEFAULT_STARTUP,
    pruner=None,
) -> list[TrialOutcome]:
    searcher = TPESearcher(reference_space(max_depth), seed, max(startup, in_flight))
    active = pruner is not None and pruner.active
    runner = FifoRunner(evaluate, pruner.thresholds if active else None)
    record = (lambda o: pruner.record(o.trial_id, o.curve)) if active else None
    return run_search(searcher, runner, n_trials, mode=mode, in_flight=in_flight, on_outcome=record)


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


def markdown_table(curves: dict, n_trials: int, work: dict | None = None) -> str:
    """Rows: a series (k in flight, or k and a pruning rule); cells: mean ± sd over seeds of
    the best RMSE after n trials; the last columns compare with the first series: the final best
    and, with ``work`` (boosting rounds run, per series and seed), the work."""
    points = checkpoints(n_trials)
    names = list(curves)
    header = ["series"] + [f"n = {n}" for n in points] + [f"vs {names[0]} at n = {n_trials}"]
    if work:
        header.append("boosting rounds run")
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    final = {
        k: mean_sd([c[n_trials - 1] for c in runs if c[n_trials - 1] is not None])[0]
        for k, runs in curves.items()
        if any(c[n_trials - 1] is not None for c in runs)
    }
    base = final.get(names[0])
    for k, runs in curves.items():
        cells = [str(k)]
        for n in points:
            present = [c[n - 1] for c in runs if c[n - 1] is not None]
            cells.append("{:.4f} ± {:.4f}".format(*mean_sd(present)) if present else "-")
        cells.append(f"{100 * (final[k] - base) / base:+.2f} %" if base and k in final else "-")
        if work:
            mine, first = statistics.fmean(work[k]), statistics.fmean(work[names[0]])
            cells.append(f"{mine:,.0f} ({mine / first:.0%})")
        lines.append("| " + " | ".join(cells) + " |")
    seeds = len(next(iter(curves.values()), []))
    lines.append(
        f"\nBest validation RMSE after n trials (pruned trials do not count), mean ± sd over {seeds} seed(s)."
    )
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
        (line,) = ax.plot(xs, [m for _, m, _ in points], label=str(k), drawstyle="steps-post")
        ax.fill_between(
            xs,
            [m - sd for _, m, sd in points],
            [m + sd for _, m, sd in points],
            color=line.get_color(),
            alpha=0.12,
            step="post",
        )
    ax.set_xlabel("trials finished (n)")
    ax.set_ylabel("best validation RMSE so far (mean ± sd over seeds)")
    ax.set_title(caption, fontsize=8)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- the study on the real data --------------------------------------------------------------------


def xgboost_evaluator(
    prepared, rounds: int, nthread: int, cache: dict, rounds_run: list | None = None
) -> Evaluate:
    """Fit one trial with ``models.fit_xgboost``; ``cache`` maps parameters to its loss, its
    validation RMSE at the checkpoint rounds and the rounds it ran. Called with thresholds
    (pruning), the trial stops at the first checkpoint above them; ``rounds_run`` collects the
    boosting rounds each evaluation cost."""
    from taxi_hpo.core import models
    from taxi_hpo.search import xgb_params
    from taxi_hpo.search.pruning import checkpoints, should_stop

    every = {r: float("inf") for r in checkpoints(rounds)}

    def evaluate(trial_id: int, params: dict, thresholds: dict | None = None) -> TrialOutcome:
        key = json.dumps(params, sort_keys=True)
        if key not in cache:
            try:
                fit = models.fit_xgboost(xgb_params(params, nthread), prepared, rounds, prune_at=every)
                cache[key] = {
                    "loss": fit.rmse_valid,
                    "curve": {str(r): v for r, v in fit.curve.items()},
                    "rounds": fit.booster.num_boosted_rounds(),
                }
            except Exception as exc:  # noqa: BLE001 - a failed trial is a result
                print(f"trial {trial_id} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                cache[key] = {"loss": None, "curve": {}, "rounds": 0}
        fit = cache[key]
        curve = {int(r): v for r, v in fit["curve"].items()}
        for r in sorted(curve):
            if thresholds and should_stop(r, curve[r], thresholds):
                if rounds_run is not None:
                    rounds_run.append(r)
                return TrialOutcome(
                    trial_id, params, curve[r], curve={k: v for k, v in curve.items() if k <= r}, pruned_at=r
                )
        if rounds_run is not None:
            rounds_run.append(fit["rounds"])
        return TrialOutcome(trial_id, params, fit["loss"], curve=curve)

    return evaluate


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--in-flight", default="1,2,4,8", help="comma-separated trials in flight (default 1,2,4,8)"
    )
    p.add_argument("--seeds", type=int, default=5, help="number of seeds, from --first-seed on (default 5)")
    p.add_argument("--first-seed", type=int, default=42)
    p.add_argument("--trials", type=int, default=32, help="trials per search (default 32)")
    p.add_argument("--rounds", type=int, default=15, help="XGBoost boosting rounds (default 15)")
    p.add_argument("--max-depth", type=int, default=20, help="upper bound of max_depth (default 20)")
    p.add_argument("--mode", choices=("async", "batch"), default="async")
    p.add_argument(
        "--prune", default="none", help="comma-separated pruning rules: none, median, asha (default none)"
    )
    p.add_argument(
        "--startup",
        type=int,
        default=DEFAULT_STARTUP,
        help=f"random start-up trials before TPE models (default {DEFAULT_STARTUP}, as the search)",
    )
    p.add_argument(
        "--nthread", type=int, default=os.cpu_count() or 1, help="XGBoost threads (default: all cores)"
    )
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
    args.prune = [r.strip() for r in args.prune.split(",") if r.strip()]
    if not args.prune or set(args.prune) - {"none", "median", "asha"}:
        p.error(f"--prune {args.prune!r}: give rules among none, median, asha")
    return args


def _load(args):
    from taxi_hpo.core import data, features

    months = [data.resolve(spec, Path(args.data_dir)) for spec in (args.train, args.valid)]
    return features.prepare_data(data.load(months[0].path), data.load(months[1].path))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        k: getattr(args, k) for k in ("trials", "rounds", "max_depth", "mode", "startup", "train", "valid")
    }
    results_path = out / "results.json"
    saved = json.loads(results_path.read_text()) if results_path.exists() else {}
    if saved.get("settings") != settings or saved.get("version") != 2:
        saved = {"settings": settings, "version": 2, "losses": {}, "rounds": {}, "fits": {}}
    prepared = _load(args)
    started = time.time()
    from taxi_hpo.search.pruning import Pruner

    def label(k: int, rule: str) -> str:
        return f"{k} in flight" + ("" if args.prune == ["none"] else f", {rule}")

    for seed in range(args.first_seed, args.first_seed + args.seeds):
        cache = saved["fits"].setdefault(str(seed), {})
        for k in args.in_flight:
            for rule in args.prune:
                key = f"{rule}/{k}/{seed}"
                if key not in saved["losses"]:
                    spent: list[int] = []
                    evaluate = xgboost_evaluator(prepared, args.rounds, args.nthread, cache, spent)
                    saved["losses"][key] = losses_in_flight(
                        evaluate,
                        k,
                        args.trials,
                        seed,
                        args.max_depth,
                        args.mode,
                        args.startup,
                        Pruner(rule, args.rounds),
                    )
                    saved["rounds"][key] = sum(spent)
                    tmp = results_path.with_suffix(".tmp")
                    tmp.write_text(json.dumps(saved))
                    os.replace(tmp, results_path)
                best = best_so_far(saved["losses"][key])[-1]
                print(
                    f"seed {seed} {label(k, rule)}: best {best} ({time.time() - started:.0f} s)",
                    file=sys.stderr,
                )
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    curves = {
        label(k, rule): [best_so_far(saved["losses"][f"{rule}/{k}/{s}"]) for s in seeds]
        for k in args.in_flight
        for rule in args.prune
    }
    work = {
        label(k, rule): [saved["rounds"][f"{rule}/{k}/{s}"] for s in seeds]
        for k in args.in_flight
        for rule in args.prune
    }
    (out / "sample_efficiency.md").write_text(markdown_table(curves, args.trials, work))
    caption = (
        f"{args.trials} trials, {args.rounds} rounds, max_depth <= {args.max_depth}, {args.mode}, "
        f"start-up {args.startup}, seeds {args.first_seed}..{args.first_seed + args.seeds - 1}, "
        "FIFO completion"
    )
    plot(curves, caption, out / "sample_efficiency.png")
    print((out / "sample_efficiency.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
