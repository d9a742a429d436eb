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
    from taxi_hpo.core import data, features

    months = [data.resolve(spec, Path(data_dir)) for spec in (train, valid)]
    return features.prepare_data(data.load(months[0].path), data.load(months[1].path))


def search(
    evaluate,
    n_trials: int,
    seed: int,
    max_depth: int,
    in_flight: int,
    warm: list[dict] | None = None,
    random_after_warm: int | None = None,
):
    """One search as ``taxi-hpo run`` sets it up (its start-up rule, ``startup_trials``);
    ``random_after_warm`` overrides the random trials after the warm points (``None``: hyperopt's
    ``points_to_evaluate``, the warm points counting toward its 20 random ones)."""
    from taxi_hpo.search import TPESearcher, reference_space, run_search
    from taxi_hpo.search.tpe import startup_trials

    startup = (
        startup_trials(in_flight)
        if random_after_warm is None
        else startup_trials(in_flight, len(warm or []), random_after_warm)
    )
    searcher = TPESearcher(reference_space(max_depth), seed, startup, warm_points=warm)
    return run_search(searcher, study.FifoRunner(evaluate), n_trials, in_flight=in_flight)


def variant_name(random_after_warm: int | None) -> str:
    return "warm, start-up 20" if random_after_warm is None else f"warm, +{random_after_warm} random"


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
    p.add_argument(
        "--source-seed-offset",
        type=int,
        default=1000,
        help="the earlier search's seed is the seed plus this (default 1000): with the same seed, "
        "the cold search's random start-up would suggest the very points the warm one starts "
        "from, and the comparison would flatter the warm start",
    )
    p.add_argument("--source", default="2023-01,2023-02")
    p.add_argument("--target", default="2023-02,2023-03")
    p.add_argument(
        "--random-after-warm",
        default="hyperopt,0",
        help="warm variants: random trials after the warm points, comma-separated; 'hyperopt' = "
        "the warm points count toward hyperopt's 20 random ones (default hyperopt,0)",
    )
    p.add_argument("--nthread", type=int, default=os.cpu_count() or 1)
    p.add_argument("--data-dir", default=os.environ.get("TAXI_HPO_DATA_DIR", "./data"))
    p.add_argument("--out", default="benchmarks/out/warm-start")
    args = p.parse_args(argv)
    variants = [
        None if v.strip() == "hyperopt" else int(v) for v in args.random_after_warm.split(",") if v.strip()
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Fits cached across runs, per month pair and point (XGBoost is deterministic for fixed
    # parameters): a rerun with another variant fits only the points it has not seen.
    fits_path = out / "fits.json"
    fits = json.loads(fits_path.read_text()) if fits_path.exists() else {}
    source = prepared_months(args.data_dir, *args.source.split(","))
    target = prepared_months(args.data_dir, *args.target.split(","))
    rows, curves = [], {"cold": [], **{variant_name(v): [] for v in variants}}

    def save_fits() -> None:
        tmp = fits_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(fits))
        os.replace(tmp, fits_path)

    for seed in range(args.first_seed, args.first_seed + args.seeds):
        source_cache = fits.setdefault(f"{args.source}/{args.rounds}", {})
        from_source = search(
            study.xgboost_evaluator(source, args.rounds, args.nthread, source_cache),
            args.trials,
            seed + args.source_seed_offset,
            args.max_depth,
            args.in_flight,
        )
        save_fits()
        best = sorted((o for o in from_source if o.ok), key=lambda o: o.loss)[: args.k]
        warm_points = [
            {
                k: o.params[k]
                for k in ("max_depth", "learning_rate", "reg_alpha", "reg_lambda", "min_child_weight")
            }
            for o in best
        ]
        # the cold and the warm searches share fits of the same target point
        evaluate = study.xgboost_evaluator(
            target, args.rounds, args.nthread, fits.setdefault(f"{args.target}/{args.rounds}", {})
        )
        cold = study.best_so_far(
            [o.loss for o in search(evaluate, args.trials, seed, args.max_depth, args.in_flight)]
        )
        goal = cold[-1]
        row = {
            "seed": seed,
            "cold_final": goal,
            "cold_trials_to_goal": first_reaching(cold, goal),
            "warm": {},
        }
        curves["cold"].append(cold)
        for v in variants:
            warm = study.best_so_far(
                [
                    o.loss
                    for o in search(
                        evaluate, args.trials, seed, args.max_depth, args.in_flight, warm_points, v
                    )
                ]
            )
            row["warm"][variant_name(v)] = {"final": warm[-1], "trials_to_goal": first_reaching(warm, goal)}
            curves[variant_name(v)].append(warm)
        save_fits()
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    names = [variant_name(v) for v in variants]
    lines = [
        "| seed | cold: final best | cold: trials to it | "
        + " | ".join(f"{n}: trials to it | {n}: final best" for n in names)
        + " |",
        "| --- | --- | --- |" + " --- | --- |" * len(names),
    ]
    for r in rows:
        cells = [str(r["seed"]), f"{r['cold_final']:.4f}", str(r["cold_trials_to_goal"])]
        for n in names:
            w = r["warm"][n]
            cells += [
                str(w["trials_to_goal"]) if w["trials_to_goal"] is not None else "not reached",
                f"{w['final']:.4f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    summary = [f"cold {statistics.median(r['cold_trials_to_goal'] for r in rows)}"]
    for n in names:
        # a seed that never reached it counts as the slowest, not as absent
        reached = [r["warm"][n]["trials_to_goal"] for r in rows]
        median = statistics.median(math.inf if t is None else t for t in reached)
        summary.append(
            f"{n} {'never' if math.isinf(median) else median} "
            f"({sum(t is not None for t in reached)} of {len(rows)} seeds reached it; mean final best "
            f"{statistics.fmean(r['warm'][n]['final'] for r in rows):.4f})"
        )
    lines.append(
        f"\nMedian trials to the cold search's final best over all {len(rows)} seeds (not reached: "
        f"the slowest): " + "; ".join(summary) + f". Cold mean final best "
        f"{statistics.fmean(r['cold_final'] for r in rows):.4f}."
    )
    (out / "warm_start.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"settings": vars(args), "rows": rows, "curves": curves}))
    caption = (
        f"{args.target} warm-started from {args.source}'s best {args.k}: {args.trials} trials, "
        f"{args.rounds} rounds, max_depth <= {args.max_depth}, seeds {args.first_seed}.."
        f"{args.first_seed + args.seeds - 1}"
    )
    study.plot(curves, caption, out / "warm_start.png")
    print((out / "warm_start.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
