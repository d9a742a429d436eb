"""Does a warm start pay? A search on the next months, cold and warm-started from the last search.

Per seed: a search on the source months (``--source``, e.g. 2023-01 -> 2023-02, with a seed of
its own); then, on the
target months (``--target``, 2023-02 -> 2023-03), a cold search and one whose first ``--k``
trials are the source search's best points (``TPESearcher(warm_points=...)``, what
``taxi-hpo run --warm-start`` does). Trials run in this process through the real scheduler
(FIFO completion, ``--in-flight`` pending), as in ``sample_efficiency.py``.

    .venv/bin/python benchmarks/warm_start.py --seeds 5 --trials 30 --rounds 30 --max-depth 40 \\
        --data-dir ../shared/data --out benchmarks/out/warm-start

Prints and writes ``warm_start.md`` (per seed: the cold search's final best, and after how many
trials each search first reached it) and ``warm_start.png`` (mean best-so-far curves).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sample_efficiency as study  # noqa: E402 - the study's runner, evaluator and curves


def prepared_months(data_dir: str, train: str, valid: str):
    from taxi_hpo import data, features

    months = [data.resolve(spec, Path(data_dir)) for spec in (train, valid)]
    return features.prepare_data(data.load(months[0].path), data.load(months[1].path))


def search(evaluate, n_trials: int, seed: int, max_depth: int, in_flight: int, warm: list[dict] | None = None):
    from taxi_hpo.search import TPESearcher, reference_space, run_search
    from taxi_hpo.search.tpe import DEFAULT_STARTUP

    searcher = TPESearcher(reference_space(max_depth), seed, max(DEFAULT_STARTUP, in_flight), warm_points=warm)
    return run_search(searcher, study.FifoRunner(evaluate), n_trials, in_flight=in_flight)


def first_reaching(curve: list[float | None], target: float) -> int | None:
    """Trials it took the best-so-far to reach ``target`` (1-based), or None."""
    return next((i + 1 for i, best in enumerate(curve) if best is not None and best <= target + 1e-12), None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--first-seed", type=int, default=1)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--k", type=int, default=5, help="warm points: the source search's best k (default 5)")
    p.add_argument("--in-flight", type=int, default=2)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--max-depth", type=int, default=40)
    p.add_argument("--source-seed-offset", type=int, default=1000,
                   help="the earlier search's seed is the seed plus this (default 1000): with the same seed, "
                        "the cold search's random start-up would suggest the very points the warm one starts "
                        "from, and the comparison would flatter the warm start")
    p.add_argument("--source", default="2023-01,2023-02")
    p.add_argument("--target", default="2023-02,2023-03")
    p.add_argument("--nthread", type=int, default=os.cpu_count() or 1)
    p.add_argument("--data-dir", default=os.environ.get("TAXI_HPO_DATA_DIR", "./data"))
    p.add_argument("--out", default="benchmarks/out/warm-start")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    source = prepared_months(args.data_dir, *args.source.split(","))
    target = prepared_months(args.data_dir, *args.target.split(","))
    rows, curves = [], {"cold": [], "warm": []}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        from_source = search(study.xgboost_evaluator(source, args.rounds, args.nthread, {}), args.trials,
                             seed + args.source_seed_offset, args.max_depth, args.in_flight)
        best = sorted((o for o in from_source if o.ok), key=lambda o: o.loss)[:args.k]
        warm_points = [{k: o.params[k] for k in ("max_depth", "learning_rate", "reg_alpha", "reg_lambda",
                                                  "min_child_weight")} for o in best]
        cache: dict = {}  # the cold and the warm search share fits of the same target point
        evaluate = study.xgboost_evaluator(target, args.rounds, args.nthread, cache)
        cold = study.best_so_far([o.loss for o in search(evaluate, args.trials, seed, args.max_depth,
                                                        args.in_flight)])
        warm = study.best_so_far([o.loss for o in search(evaluate, args.trials, seed, args.max_depth,
                                                        args.in_flight, warm_points)])
        goal = cold[-1]
        rows.append({"seed": seed, "cold_final": goal, "warm_final": warm[-1],
                     "cold_trials_to_goal": first_reaching(cold, goal), "warm_trials_to_goal": first_reaching(warm, goal)})
        curves["cold"].append(cold)
        curves["warm"].append(warm)
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    lines = ["| seed | cold: final best | cold: trials to it | warm: trials to it | warm: final best |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['cold_final']:.4f} | {r['cold_trials_to_goal']} | "
                     f"{r['warm_trials_to_goal'] if r['warm_trials_to_goal'] is not None else 'not reached'} | "
                     f"{r['warm_final']:.4f} |")
    reached = [r["warm_trials_to_goal"] for r in rows if r["warm_trials_to_goal"] is not None]
    # a seed that never reached it counts as the slowest, not as absent
    warm_median = statistics.median([math.inf if r["warm_trials_to_goal"] is None else r["warm_trials_to_goal"]
                                     for r in rows])
    lines.append(f"\nMedian trials to the cold search's final best over all {len(rows)} seeds (not reached: "
                 f"never): cold {statistics.median(r['cold_trials_to_goal'] for r in rows)}, warm "
                 f"{'never' if math.isinf(warm_median) else warm_median} ({len(reached)} of {len(rows)} seeds "
                 f"reached it).")
    (out / "warm_start.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"settings": vars(args), "rows": rows, "curves": curves}))
    caption = (f"{args.target} warm-started from {args.source}'s best {args.k}: {args.trials} trials, "
               f"{args.rounds} rounds, max_depth <= {args.max_depth}, seeds {args.first_seed}.."
               f"{args.first_seed + args.seeds - 1}")
    study.plot(curves, caption, out / "warm_start.png")
    print((out / "warm_start.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
