"""Which cheap fit ranks the trials as the full one does: row samples, early rounds, both.

For each month pair (train -> valid), a sequential TPE search of ``--points`` points (its first
ones hyperopt's random start-up, then TPE's own proposals, each told the full fit's loss) fits
every point on all training rows for ``--rounds`` rounds with early stopping: the fit a trial
makes today, whose best validation RMSE is the *final* one. Each point is then fitted again on
fixed row samples of the training month (``--fractions``; uniform, and stratified by location
pair ``PU_DO`` so that every pair keeps its share), validated on the whole validation month
as the full fit is (``--columns compact``, the default: a sample's matrices keep only the
columns it has values in; the same trees, a fraction of the cost). Every fit records its
validation RMSE and its thread's CPU time after each round, so a sample's curve also gives the
combinations "rows x early rounds".

For every fidelity (rows, sampling, rounds) it prints, over all points and on the TPE phase
alone: the cost (the fidelity's CPU time over the full fit's, median of the points, and the
sum over the points), Spearman's rank correlation with the final RMSE, how many of the best
tenth a best-third cut keeps (ASHA's eta = 3), and the *promotion regret*: promote the best
third at that fidelity, fit those fully, keep the best; how much worse its RMSE is than the
true best (0 % when the cut keeps it).

    .venv/bin/python benchmarks/fidelities.py --points 40 --rounds 30 --max-depth 40 \\
        --pairs 2021-01:2021-02,2023-01:2023-02 --data-dir ../shared/data

One XGBoost thread, CPU time of that thread: it can run beside other work (niced). Writes
``fidelities.json`` (every curve) and ``fidelities.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import scipy.sparse as sp


def stratified_sample(groups: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Row indices keeping ``fraction`` of each group (stochastic rounding, so small groups are
    kept in proportion on average), sorted."""
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    sizes = np.diff(np.r_[starts, len(groups)])
    want = sizes * fraction
    take = np.floor(want).astype(int) + (rng.random(len(sizes)) < want - np.floor(want))
    picked = [
        order[start + rng.choice(size, k, replace=False)]
        for start, size, k in zip(starts, sizes, take)
        if k > 0
    ]
    return np.sort(np.concatenate(picked))


def measures(at: list[float], final: list[float], cost: list[float], eta: int = 3) -> dict:
    """What a fidelity whose scores are ``at`` (one per point) knows of ``final``."""
    from scipy.stats import spearmanr

    n = len(final)
    best_tenth = set(sorted(range(n), key=final.__getitem__)[: max(1, n // 10)])
    promoted = sorted(range(n), key=at.__getitem__)[: max(1, n // eta)]
    true_best = min(final)
    return {
        "cost_median": statistics.median(cost),
        "spearman": float(spearmanr(at, final).statistic),
        "kept": sum(i in best_tenth for i in promoted),
        "of": len(best_tenth),
        "regret": min(final[i] for i in promoted) / true_best - 1.0,
    }


def fit(xgb, params: dict, dtrain, dvalid, rounds: int, early: int) -> dict:
    class Clock(xgb.callback.TrainingCallback):
        def __init__(self):
            self.cpu, self.start = [], time.thread_time()

        def after_iteration(self, model, epoch, evals_log):
            self.cpu.append(time.thread_time() - self.start)
            return False

    clock, log = Clock(), {}
    xgb.train(
        params,
        dtrain,
        rounds,
        evals=[(dvalid, "validation")],
        early_stopping_rounds=early,
        verbose_eval=False,
        callbacks=[clock],
        evals_result=log,
    )
    return {"cpu_s": clock.cpu, "rmse": log["validation"]["rmse"]}


def at_round(curve: list[float], r: int | None) -> float:
    """A curve's value after round r (None: its end); an early-stopped fit keeps its last value."""
    return curve[-1] if r is None else curve[min(r, len(curve)) - 1]


def study_pair(args, train_spec: str, valid_spec: str) -> dict:
    import xgboost as xgb

    from taxi_hpo.core import data, features
    from taxi_hpo.core.models import EARLY_STOPPING_ROUNDS
    from taxi_hpo.search import TPESearcher, reference_space, xgb_params

    months = [data.resolve(spec, Path(args.data_dir)) for spec in (train_spec, valid_spec)]
    train, valid = data.load(months[0].path), data.load(months[1].path)
    prepared = features.prepare_data(train, valid)
    groups = (train["PULocationID"].astype(str) + "_" + train["DOLocationID"].astype(str)).to_numpy()
    dvalid = xgb.DMatrix(prepared.X_valid, label=prepared.y_valid)
    rng = np.random.default_rng(args.seed)
    samples = {"1": (xgb.DMatrix(prepared.X_train, label=prepared.y_train), dvalid)}
    build_s, columns = {}, {"1": prepared.X_train.shape[1]}
    for fraction in args.fractions:
        for how in ("uniform", "stratified"):
            name = f"1/{round(1 / fraction)} {how}"
            started = time.perf_counter()
            # the sample as the package builds it: kept to the columns it has values in
            if how == "uniform":
                sample = features.row_sample(prepared, fraction, seed=args.seed)
            else:
                sample = features.keep_rows(prepared, stratified_sample(groups, fraction, rng), name)
            x, sample_valid = sample.X_train, xgb.DMatrix(sample.X_valid, label=sample.y_valid)
            if args.columns == "all":  # the same rows at all the preprocessor's columns
                x = sp.csr_matrix(
                    (x.data, sample.columns[x.indices], x.indptr), shape=(x.shape[0], columns["1"])
                )
                sample_valid = dvalid
            samples[name] = (xgb.DMatrix(x, label=sample.y_train), sample_valid)
            build_s[name] = time.perf_counter() - started
            columns[name] = x.shape[1]
    searcher = TPESearcher(reference_space(args.max_depth), args.seed)
    points, fits = [], []
    for i in range(args.points):
        point = searcher.suggest(i)
        params = xgb_params(point, 1)
        curves = {
            name: fit(xgb, params, dtrain, dvalid_of, args.rounds, EARLY_STOPPING_ROUNDS)
            for name, (dtrain, dvalid_of) in samples.items()
        }
        searcher.record(i, min(curves["1"]["rmse"]))
        points.append(point)
        fits.append(curves)
        print(
            f"{train_spec}->{valid_spec} {i + 1}/{args.points}: full {curves['1']['cpu_s'][-1]:.2f} s "
            f"best {min(curves['1']['rmse']):.4f}",
            file=sys.stderr,
            flush=True,
        )
    return {
        "train": train_spec,
        "valid": valid_spec,
        "rows": len(groups),
        "columns": prepared.X_train.shape[1],
        "sample_rows": {name: m.num_row() for name, (m, _) in samples.items()},
        "sample_columns": columns,
        "sample_build_s": build_s,
        "points": points,
        "fits": fits,
        "startup": searcher.n_startup_jobs,
    }


def table(pair: dict, rounds_at: list[int | None]) -> list[str]:
    fits = pair["fits"]
    final = [min(f["1"]["rmse"]) for f in fits]
    full_cpu = [f["1"]["cpu_s"][-1] for f in fits]
    tpe = [i for i in range(len(fits)) if i >= pair["startup"]]
    lines = [
        f"**{pair['train']} -> {pair['valid']}**: {pair['rows']:,} training rows, {pair['columns']:,} "
        f"columns, {len(fits)} points ({len(tpe)} proposed by TPE); full fits {sum(full_cpu):.0f} CPU-s "
        f"in all, best {min(final):.4f}",
        "",
        "| rows | rounds | cost (median) | cost (sum) | Spearman, all | Spearman, TPE's | "
        "best tenth kept by a best-third cut | promotion regret |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in fits[0]:
        for r in rounds_at:
            if name == "1" and r is None:
                continue  # the full fit itself
            at = [(min(f[name]["rmse"]) if r is None else at_round(f[name]["rmse"], r)) for f in fits]
            cost = [at_round(f[name]["cpu_s"], r) / full for f, full in zip(fits, full_cpu)]
            m = measures(at, final, cost)
            rho_tpe = (
                f"{measures([at[i] for i in tpe], [final[i] for i in tpe], cost)['spearman']:.2f}"
                if len(tpe) >= 3
                else "-"
            )
            total = sum(at_round(f[name]["cpu_s"], r) for f in fits) / sum(full_cpu)
            lines.append(
                f"| {'all' if name == '1' else name} ({pair['sample_rows'][name]:,} x "
                f"{pair['sample_columns'][name]:,}) | "
                f"{'all (early stopping)' if r is None else r} | {m['cost_median']:.0%} | {total:.0%} | "
                f"{m['spearman']:.2f} | {rho_tpe} | {m['kept']} of {m['of']} | "
                f"{m['regret']:+.2%} |"
            )
    return lines


#: Ladders replayed by ``--replay``: rungs (sample, rounds; None: all rounds, early stopping)
#: below the full fit, cheapest first.
LADDERS = {
    "all rows, 3 rounds": [("1", 3)],
    "all rows, 9 rounds": [("1", 9)],
    "1/3 rows, 9 rounds": [("1/3 uniform", 9)],
    "1/3 rows": [("1/3 uniform", None)],
    "1/9 rows, 9 rounds": [("1/9 uniform", 9)],
    "1/9 rows, 9 rounds -> 1/3 rows": [("1/9 uniform", 9), ("1/3 uniform", None)],
    "1/9 rows, 9 rounds -> 1/3 rows, 9 rounds": [("1/9 uniform", 9), ("1/3 uniform", 9)],
}


def replay(pair: dict, ladder: list[tuple[str, int | None]], eta: int = 3, target_of: int = 32) -> dict:
    """Asynchronous successive halving with promotion (``taxi_hpo.search.promotion``, ASHA's
    promote mode), one slot, on the recorded fits, the points in TPE's order: each point is fitted
    at the lowest rung; after each fit, the promotions due are fitted, highest rung first, the
    last rung being the full fit (from scratch; a rounds rung at all rows is
    continued: its cost is counted once). Returns the CPU-s until a full fit reaches the best of
    the first ``target_of`` full fits (the plain sequential search's best-of-32), against the
    plain search's own time to it.

    The order is the plain search's (TPE told full losses): a search that sees low-fidelity
    losses would propose other points. An estimate of the work a ladder saves, not a search."""
    fits = pair["fits"]
    final = [min(f["1"]["rmse"]) for f in fits]
    full_cpu = [f["1"]["cpu_s"][-1] for f in fits]
    target = min(final[:target_of])
    plain = next(sum(full_cpu[: i + 1]) for i in range(len(fits)) if final[i] <= target)

    def score(i, rung):
        name, r = ladder[rung]
        curve = fits[i][name]["rmse"]
        return min(curve) if r is None else at_round(curve, r)

    def cost(i, rung):
        if rung == len(ladder):  # the full fit, less what a rounds rung at all rows already spent
            below = [at_round(fits[i]["1"]["cpu_s"], r) for name, r in ladder if name == "1" and r]
            return full_cpu[i] - (max(below) if below else 0.0)
        name, r = ladder[rung]
        return at_round(fits[i][name]["cpu_s"], r)

    from taxi_hpo.search.promotion import COMPLETE, Promoter, Rung

    promoter = Promoter([Rung(float(Fraction(name.split()[0])), r) for name, r in ladder] + [COMPLETE], eta)
    spent, best, reached, full_fits = 0.0, math.inf, None, 0
    for i in range(len(fits)):
        spent += cost(i, 0)
        promoter.record(i, 0, score(i, 0))
        while (promotion := promoter.take()) is not None:
            j, rung = promotion
            spent += cost(j, rung)
            if rung < promoter.top:
                promoter.record(j, rung, score(j, rung))
                continue
            promoter.record(j, rung, final[j])
            full_fits += 1
            best = min(best, final[j])
            if reached is None and final[j] <= target:
                reached = spent
    return {
        "target": target,
        "plain_s": plain,
        "ladder_s": reached,
        "speedup": plain / reached if reached else None,
        "full_fits": full_fits,
        "all_points_s": spent,
        "all_points_plain_s": sum(full_cpu),
        "best": best,
    }


def reordered(pair: dict, order: list[int]) -> dict:
    return {**pair, "fits": [pair["fits"][i] for i in order]}


def replay_table(pairs: list[dict], orders: int = 200, seed: int = 0) -> list[str]:
    """Per ladder and pair: the replay in TPE's order, and over ``orders`` random orders of the
    same points (each with its own best-of-32 target): the median speedup (a target never
    reached counts as 0x) and how often the target is reached at all."""
    import random

    head = " | ".join(f"{p['train']} -> {p['valid']}, TPE's order | {orders} random orders" for p in pairs)
    lines = [f"| ladder (below the full fit) | {head} |", "| --- |" + " --- | --- |" * len(pairs)]
    shuffles = {}
    for pair in pairs:
        rng = random.Random(seed)
        n = len(pair["fits"])
        shuffles[pair["train"]] = [rng.sample(range(n), n) for _ in range(orders)]
    for label, ladder in LADDERS.items():
        cells = []
        for pair in pairs:
            if any(name not in pair["fits"][0] for name, _ in ladder):
                cells += ["-", "-"]
                continue
            out = replay(pair, ladder)
            when = f"{out['speedup']:.2f}x sooner" if out["speedup"] else "never"
            cells.append(
                f"{when}; {out['full_fits']} full fits; all {len(pair['fits'])} points in "
                f"{out['all_points_s'] / out['all_points_plain_s']:.0%} of the work"
            )
            many = [replay(reordered(pair, order), ladder) for order in shuffles[pair["train"]]]
            reached = sum(m["speedup"] is not None for m in many)
            median = statistics.median(m["speedup"] or 0.0 for m in many)
            cells.append(f"median {median:.2f}x; reached in {reached / len(many):.0%}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", type=int, default=40)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--max-depth", type=int, default=40)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--fractions", default="1/27,1/9,1/3", help="row fractions, comma-separated")
    p.add_argument(
        "--columns",
        choices=["compact", "all"],
        default="compact",
        help="a sample's matrix keeps only the columns it has values in (compact) or all of them",
    )
    p.add_argument("--at-rounds", default="3,9", help="early rounds to score at, besides the end")
    p.add_argument("--pairs", default="2021-01:2021-02", help="TRAIN:VALID month pairs, comma-separated")
    p.add_argument("--data-dir", default=os.environ.get("TAXI_HPO_DATA_DIR", "./data"))
    p.add_argument("--out", default="benchmarks/out/fidelities")
    p.add_argument(
        "--replay",
        metavar="FIDELITIES_JSON",
        default=None,
        help="no fits: replay the promotion ladders on a study's recorded fits and print the table",
    )
    args = p.parse_args(argv)
    if args.replay:
        print("\n".join(replay_table(json.loads(Path(args.replay).read_text())["pairs"])))
        return 0
    args.fractions = [float(Fraction(f)) for f in args.fractions.split(",")]
    rounds_at = [int(r) for r in args.at_rounds.split(",") if r] + [None]

    pairs = [study_pair(args, *spec.split(":")) for spec in args.pairs.split(",")]
    lines = []
    for pair in pairs:
        lines += table(pair, rounds_at) + [""]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fidelities.json").write_text(json.dumps({"settings": vars(args), "pairs": pairs}))
    (out / "fidelities.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
