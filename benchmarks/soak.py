"""Soak: many cheap trials on 2 workers; memory of the scheduler and workers, start vs end.

Usage: .venv/bin/python benchmarks/soak.py --data-dir ../shared/data --trials 500 [--out soak.json]

Runs the real `taxi-hpo run` path in-process (Prefect API, LocalCluster, sqlite MLflow store in a
temporary folder) and samples resident memory of the flow process (which hosts the LocalCluster's
scheduler) and of every worker after the first trial and every 50 trials. Also counts log records
and warnings that signal trouble: "database is locked", "Sending large graph", "unmanaged memory".
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

TROUBLE = ("database is locked", "large graph", "unmanaged memory", "event loop was unresponsive")


class TroubleCounter(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.counts = {t: 0 for t in TROUBLE}

    def emit(self, record):
        text = record.getMessage().lower()
        for t in TROUBLE:
            if t in text:
                self.counts[t] += 1


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class MemorySampler:
    """A Reporter (see taxi_hpo.flows) that samples memory as trials finish."""

    def __init__(self, every: int):
        self.every, self.done, self.samples = every, 0, []

    def start(self, total, dashboard, layout=None):
        self.total = total

    def update(self, outcome):
        import distributed

        self.done += 1
        if self.done == 1 or self.done % self.every == 0 or self.done == self.total:
            client = distributed.get_client()
            workers = client.run(rss_mb)
            self.samples.append(
                {
                    "trials": self.done,
                    "t": time.time(),
                    "flow_and_scheduler_mb": round(rss_mb(), 1),
                    "workers_mb": {w: round(v, 1) for w, v in workers.items()},
                    "scheduler_tasks": client.run_on_scheduler(
                        lambda dask_scheduler: len(dask_scheduler.tasks)
                    ),
                }
            )

    def stop(self):
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--trials", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-depth", type=int, default=6)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--out", default="soak.json")
    args = ap.parse_args()
    out, data_dir = Path(args.out).resolve(), str(Path(args.data_dir).resolve())

    work = Path(tempfile.mkdtemp(prefix="taxi-hpo-soak-"))
    os.environ.setdefault("PREFECT_HOME", str(work / "prefect"))
    os.chdir(work)
    from taxi_hpo import flows, tracking
    from taxi_hpo.config import RunConfig

    counter = TroubleCounter()
    logging.getLogger().addHandler(counter)
    for name in ("distributed", "prefect", "mlflow"):
        logging.getLogger(name).addHandler(counter)
    sampler = MemorySampler(args.every)
    cfg = RunConfig(
        data_dir=data_dir,
        trials=args.trials,
        workers=2,
        rounds=args.rounds,
        max_depth=args.max_depth,
        register=False,
        workdir=str(work),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        started = time.time()
        summary = flows.execute(cfg, sampler)
        wall = time.time() - started
    finished = tracking.child_runs(summary["tracking_uri"], summary["parent_run_id"], status="FINISHED")
    first, last = sampler.samples[0], sampler.samples[-1]
    report = {
        "trials": args.trials,
        "rounds": args.rounds,
        "max_depth": args.max_depth,
        "wall_s": round(wall, 1),
        "trials_done": summary["trials_done"],
        "trials_failed": summary["trials_failed"],
        "finished_child_runs": len(finished),
        "utilisation": summary["utilisation"],
        "flow_and_scheduler_mb": [first["flow_and_scheduler_mb"], last["flow_and_scheduler_mb"]],
        "workers_mb": [sorted(first["workers_mb"].values()), sorted(last["workers_mb"].values())],
        "scheduler_tasks": [first["scheduler_tasks"], last["scheduler_tasks"]],
        "trouble_log_records": counter.counts,
        "trouble_warnings": sum(1 for w in caught if any(t in str(w.message).lower() for t in TROUBLE)),
        "samples": sampler.samples,
    }
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
