"""Cold start: from typing `taxi-hpo run` to the first trial running, and to the process's exit.

Usage: .venv/bin/python benchmarks/first_trial.py --data-dir ../shared/data [--repeats 3] [--workers 2]
       [--worker-start spawn,forkserver] [--api-url URL] [--address tcp://127.0.0.1:8786]

Each repeat runs the real CLI in a fresh temporary folder (new sqlite MLflow store) with no
PREFECT_API_URL, so it starts its own Prefect API server (on your Prefect database, as `taxi-hpo
run` does) and LocalCluster; with ``--api-url`` it talks to that running server instead (the
Zoomcamp way: `prefect server start` and PREFECT_API_URL set); with ``--address`` it searches on
that running Dask cluster (cluster/local/start-scheduler.sh and start-workers.sh) instead of
starting one. The first repeat may also
preprocess and fit the baseline; later ones hit the cache. ``--worker-start`` runs each repeat
once per way of starting the local workers (TAXI_HPO_WORKER_START), interleaved.
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


def once(
    data_dir: str,
    workers: int,
    worker_start: str | None = None,
    api_url: str | None = None,
    address: str | None = None,
) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    if api_url:
        env["PREFECT_API_URL"] = api_url
    if worker_start:
        env["TAXI_HPO_WORKER_START"] = worker_start
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
                *(["--address", address] if address else ["--workers", str(workers)]),
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
        "worker_start": worker_start or "default",
        "to_first_trial_s": round(first - started, 2),
        "to_exit_s": round(ended - started, 2),
        # the whole command less the search (first suggestion to the last trial recorded)
        "outside_search_s": round(ended - started - summary["search_wall_s"], 2),
        "loadavg_at_start": round(load, 2),
        "timeline": summary["timeline"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="folder holding green_tripdata_2021-01/02.parquet")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--worker-start",
        default=None,
        help="comma-separated ways to start local workers, run in turn each repeat (spawn, forkserver)",
    )
    p.add_argument("--api-url", default=None, help="a running Prefect API (default: each run starts its own)")
    p.add_argument(
        "--address", default=None, help="a running Dask scheduler (default: each run starts a cluster)"
    )
    args = p.parse_args()
    ways = args.worker_start.split(",") if args.worker_start else [None]
    runs = []
    for _ in range(args.repeats):
        for way in ways:
            runs.append(
                once(str(Path(args.data_dir).resolve()), args.workers, way, args.api_url, args.address)
            )
            print(json.dumps(runs[-1]), flush=True)
    for way in ways:
        mine = [r for r in runs if r["worker_start"] == (way or "default")]
        print(
            json.dumps(
                {
                    "cores": usable_cores(),
                    "workers": args.workers,
                    "worker_start": way or "default",
                    "api": "running" if args.api_url else "started by each run",
                    "cluster": args.address or "started by each run",
                    "repeats": len(mine),
                    **{
                        f"{key}_median": statistics.median(r[key] for r in mine)
                        for key in ("to_first_trial_s", "outside_search_s", "to_exit_s")
                    },
                    "loadavg_at_start": [r["loadavg_at_start"] for r in mine],
                }
            )
        )


if __name__ == "__main__":
    main()
