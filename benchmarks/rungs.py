"""What a pruning checkpoint costs and what it knows: per boosting round, the share of a fit's
time spent by then and how well the validation RMSE there ranks the trials' final RMSE.

Fits ``--points`` random points of the reference space (hyperopt's random sampler, as TPE's
start-up draws them; or, ``--from-study``, points TPE proposed in a pruning study) for ``--rounds`` rounds
with early stopping, one thread, recording each
round's validation RMSE and the process's CPU time. Prints, per round r: the median share of the
fit's CPU time spent by round r (what a trial pruned there has cost), Spearman's rank correlation
between the RMSE at r and the final (best) RMSE, and how many of the best tenth of the points a
cut at r keeping the best third (ASHA's eta = 3) would keep.

    .venv/bin/python benchmarks/rungs.py --points 60 --rounds 30 --max-depth 40 --data-dir ../shared/data
    .venv/bin/python benchmarks/rungs.py --points 40 --from-study benchmarks/out/pruning/results.json \
        --rounds 30 --max-depth 40 --data-dir ../shared/data --out benchmarks/out/rungs-tpe

Counts CPU time of one thread, so it can run beside other work (niced); writes ``rungs.json``
(every curve) and ``rungs.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(xs):
        order = sorted(range(len(xs)), key=xs.__getitem__)
        r = [0.0] * len(xs)
        for rank, i in enumerate(order):
            r[i] = float(rank)
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", type=int, default=40)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--max-depth", type=int, default=40)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--from-study",
        metavar="RESULTS_JSON",
        default=None,
        help="fit points TPE proposed instead: a random --points of the fitted points of a "
        "sample_efficiency.py study (its results.json), shuffled with --seed",
    )
    p.add_argument("--train", default="2021-01")
    p.add_argument("--valid", default="2021-02")
    p.add_argument("--data-dir", default=os.environ.get("TAXI_HPO_DATA_DIR", "./data"))
    p.add_argument("--out", default="benchmarks/out/rungs")
    args = p.parse_args(argv)

    import xgboost as xgb

    from taxi_hpo.core import data, features, models
    from taxi_hpo.core.models import EARLY_STOPPING_ROUNDS
    from taxi_hpo.search import TPESearcher, reference_space, xgb_params
    from taxi_hpo.search.pruning import ETA, checkpoints

    months = [data.resolve(spec, Path(args.data_dir)) for spec in (args.train, args.valid)]
    prepared = features.prepare_data(data.load(months[0].path), data.load(months[1].path))
    dtrain, dvalid = models.matrices(prepared)
    if args.from_study:
        import random

        study = json.loads(Path(args.from_study).read_text())
        proposed = [
            json.loads(k) for fits in study["fits"].values() for k, v in fits.items() if v["loss"] is not None
        ]
        random.Random(args.seed).shuffle(proposed)
        points = proposed[: args.points]
    else:
        searcher = TPESearcher(reference_space(args.max_depth), args.seed, n_startup_jobs=args.points + 1)
        points = []
        for i in range(args.points):
            points.append(searcher.suggest(i))
            searcher.record(i, 0.0)

    class Clock(xgb.callback.TrainingCallback):
        def __init__(self):
            self.cpu, self.start = [], time.process_time()

        def after_iteration(self, model, epoch, evals_log):
            self.cpu.append(time.process_time() - self.start)
            return False

    fits = []
    for i, point in enumerate(points):
        clock, log = Clock(), {}
        xgb.train(
            xgb_params(point, 1),
            dtrain,
            args.rounds,
            evals=[(dvalid, "validation")],
            early_stopping_rounds=EARLY_STOPPING_ROUNDS,
            verbose_eval=False,
            callbacks=[clock],
            evals_result=log,
        )
        fits.append({"params": point, "cpu_s": clock.cpu, "rmse": log["validation"]["rmse"]})
        print(
            f"{i + 1}/{len(points)}: {clock.cpu[-1]:.1f} s, {len(clock.cpu)} rounds",
            file=sys.stderr,
            flush=True,
        )

    final = [min(f["rmse"]) for f in fits]
    best_tenth = sorted(range(len(fits)), key=final.__getitem__)[: max(1, len(fits) // 10)]
    rungs = set(checkpoints(args.rounds))
    lines = [
        f"| round | share of the fit's CPU time by then (median) | rank correlation with the final RMSE | "
        f"best tenth kept by a best-third cut ({len(best_tenth)} points) |",
        "| --- | --- | --- | --- |",
    ]
    for r in range(1, args.rounds):
        # an early-stopped fit that ended before r keeps its last value, as its curve would
        at = [f["rmse"][min(r, len(f["rmse"])) - 1] for f in fits]
        share = statistics.median(f["cpu_s"][min(r, len(f["cpu_s"])) - 1] / f["cpu_s"][-1] for f in fits)
        cut = sorted(at)[max(1, len(at) // ETA) - 1]
        kept = sum(at[i] <= cut for i in best_tenth)
        mark = " (a rung)" if r in rungs else ""
        lines.append(f"| {r}{mark} | {share:.0%} | {spearman(at, final):.2f} | {kept} of {len(best_tenth)} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rungs.json").write_text(json.dumps({"settings": vars(args), "fits": fits}))
    (out / "rungs.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
