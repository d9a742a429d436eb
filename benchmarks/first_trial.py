"""Cold start: from typing `taxi-hpo run` to the first trial running, and to the process's exit.

Usage: .venv/bin/python benchmarks/first_trial.py --data-dir ../shared/data [--repeats 3] [--workers 2]

Each repeat runs the real CLI in a fresh temporary folder (new sqlite MLflow store) with no
PREFECT_API_URL, so it starts its own Prefect API server (on your Prefect database, as `taxi-hpo
run` does) and LocalCluster. The first repeat may also preprocess; later ones hit the cache.
A tiny search (2 trials, 5 rounds, depth <= 6): the figure is start-up, not search. Prints one JSON line
per repeat and a summary with the machine's load average, since on a
shared machine other processes stretch start-up the most.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from taxi_hpo.core.machine import usable_cores

CLI = Path(sys.executable).with_name("taxi-hpo")


def once(data_dir: str, workers: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    with tempfile.TemporaryDirectory(prefix="taxi-hpo-cold-") as cwd:
        load = os.getloadavg()[0]
        started = time.time()
        proc = subprocess.run(
            [
                str(CLI),
                "run",
                "--data-dir",
                data_dir,
                "--trials",
                "2",
                "--workers",
                str(workers),
                "--rounds",
                "5",
                "--max-depth",
                "6",
                "--no-register",
                "--json",
            ],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        ended = time.time()
    if proc.returncode != 0:
        sys.exit(f"taxi-hpo run failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    first = min(t["started"] for t in summary["trials"])
    return {
        "to_first_trial_s": round(first - started, 2),
        "to_exit_s": round(ended - started, 2),
        "loadavg_at_start": round(load, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="folder holding green_tripdata_2021-01/02.parquet")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    runs = []
    for _ in range(args.repeats):
        runs.append(once(str(Path(args.data_dir).resolve()), args.workers))
        print(json.dumps(runs[-1]), flush=True)
    print(
        json.dumps(
            {
                "cores": usable_cores(),
                "workers": args.workers,
                "repeats": args.repeats,
                "to_first_trial_s_median": statistics.median(r["to_first_trial_s"] for r in runs),
                "to_exit_s_median": statistics.median(r["to_exit_s"] for r in runs),
                "loadavg_at_start": [r["loadavg_at_start"] for r in runs],
            }
        )
    )


if __name__ == "__main__":
    main()
