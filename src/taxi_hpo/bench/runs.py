"""The benchmark's runs: one layout, one repeat, and where the machine's CPU went meanwhile.

``seq`` is the reference search inside the project (logged like a parallel search), ``script``
the reference pipeline's own script as a separate command, ``WxT`` one search flow on a fresh
LocalCluster (or, with ``whole``, a whole ``taxi-hpo run`` command). Each returns a plain dict
that ``bench`` summarises; :class:`CpuSampler` tells whose processes took the cores.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TRIAL_KEYS = (
    "trial_id",
    "loss",
    "started",
    "finished",
    "fit_s",
    "train_s",
    "train_cpu_s",
    "threads_mean",
    "worker",
    "error",
    "params",
    "pruned_at",
    "fidelity",
)


def trial_record(values: dict) -> dict:
    """What bench.json keeps of a trial: its timings, threads, loss, slot and point."""
    metrics = values.get("metrics") or {}
    return {key: values.get(key, metrics.get(key)) for key in TRIAL_KEYS}


def _first_start(records: list[dict], called: float) -> float | None:
    starts = [r["started"] for r in records if r["started"]]
    return round(min(starts) - called, 3) if starts else None


def run_seq(cfg, layout, prepared, repeat: int) -> dict:
    """The reference search in this process, each trial logged like a parallel one."""
    from taxi_hpo import tracking
    from taxi_hpo.core import features, models
    from taxi_hpo.flows import trials
    from taxi_hpo.search import TrialOutcome, reference_space
    from taxi_hpo.search.baseline import run_reference
    from taxi_hpo.search.pruning import Pruner

    run_cfg = cfg.run_config(layout)
    called = time.time()
    uri = run_cfg.resolved_tracking_uri
    experiment_id = tracking.prepare_store(uri, cfg.experiment, run_cfg.artifact_root)
    params = {**cfg.describe(), "layout": layout.name, "repeat": repeat, "nthread": layout.threads}
    with tracking.parent_run(
        uri, experiment_id, params, {"taxi_hpo.bench": layout.name}, run_name=f"bench-{layout.name}"
    ) as parent:
        ctx = parent.trial_context(features.preprocessor_sha256(prepared.preprocessor))
        models.matrices(prepared)  # as the reference pipeline: the DMatrix pair is built before fmin
        pruner = Pruner(cfg.prune, cfg.rounds)

        def evaluate(trial_id: int, params: dict) -> TrialOutcome:
            prune_at = pruner.thresholds() if pruner.active else None
            try:
                outcome = TrialOutcome(
                    **trials.run_trial(
                        trial_id, params, prepared, ctx, cfg.rounds, layout.threads, prune_at=prune_at
                    )
                )
            except Exception as exc:  # noqa: BLE001 - a failed trial is a result, as in the parallel search
                return TrialOutcome(trial_id, params, None, error=f"{type(exc).__name__}: {exc}")
            pruner.record(trial_id, outcome.curve)
            return outcome

        start = time.time()
        outcomes = run_reference(reference_space(cfg.max_depth), evaluate, run_cfg.trials, cfg.seed)
        wall = time.time() - start
        losses = [o.loss for o in outcomes if o.ok]
        parent.metrics.update({"search_wall_s": wall, **({"best_rmse": min(losses)} if losses else {})})
    records = [trial_record(dataclasses.asdict(o)) for o in outcomes]
    return {
        "layout": layout.name,
        "repeat": repeat,
        "slots": 1,
        "cores": layout.cores,
        "wall_s": round(wall, 3),
        "search_started": start,
        "first_trial_s": _first_start(records, called),
        "parent_run_id": parent.run_id,
        "trials": records,
    }


def run_script(cfg, layout, repeat: int, train: Path, valid: Path) -> dict:
    """The reference pipeline's own script (``reference_script.py``) as a command of its own."""
    script = Path(__file__).with_name("reference_script.py")
    command = [
        sys.executable,
        str(script),
        "--train",
        str(train),
        "--valid",
        str(valid),
        "--trials",
        str(cfg.trials),
        "--rounds",
        str(cfg.rounds),
        "--max-depth",
        str(cfg.max_depth),
        "--seed",
        str(cfg.seed),
        "--nthread",
        str(layout.threads),
    ]
    called = time.time()
    proc = subprocess.run(command, capture_output=True, text=True, env=_plain_env())
    command_s = time.time() - called
    if proc.returncode != 0:
        raise RuntimeError(f"the reference script failed: {proc.stderr.strip().splitlines()[-1:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    records = [
        trial_record({**t, "worker": "script", "threads_mean": float(layout.threads), "train_s": t["fit_s"]})
        for t in out["trials"]
    ]
    return {
        "layout": layout.name,
        "repeat": repeat,
        "slots": 1,
        "cores": layout.cores,
        "wall_s": round(out["search_wall_s"], 3),
        "command_s": round(command_s, 3),
        "called": called,
        "search_started": out["search_started"],
        "first_trial_s": _first_start(records, called),
        "parent_run_id": None,
        "trials": records,
    }


def run_parallel(cfg, layout, repeat: int, timeout_s: float | None = None) -> dict:
    """One search flow on a fresh LocalCluster of ``layout``, in this process (``timeout_s``: its
    search's budget)."""
    from taxi_hpo import flows, timeline

    timeline.reset()  # this search's steps only
    called = time.time()
    summary = flows.execute(cfg.run_config(layout, timeout_s))
    # its steps from the call on (not from the bench's own start)
    offset = timeline.since_start(called)
    summary["timeline"] = {step: round(t - offset, 3) for step, t in summary.get("timeline", {}).items()}
    return _from_summary(layout, repeat, summary, called)


def run_command(cfg, layout, repeat: int, timeout_s: float | None = None) -> dict:
    """``taxi-hpo run`` for ``layout`` as a whole command, as a user types it: its own Prefect
    API server and cluster, the baseline and the registration included (``command_s``);
    ``timeout_s``: its ``--timeout``."""
    run_cfg = cfg.run_config(layout, timeout_s)
    cli = Path(sys.executable).with_name("taxi-hpo")
    flags = {
        "--train": run_cfg.train, "--valid": run_cfg.valid, "--data-dir": run_cfg.data_dir,
        "--trials": run_cfg.trials, "--rounds": cfg.rounds, "--max-depth": cfg.max_depth, "--seed": cfg.seed,
        "--mode": cfg.mode, "--workers": layout.workers, "--threads-per-worker": layout.threads,
        "--experiment": cfg.experiment, "--tracking-uri": run_cfg.resolved_tracking_uri,
    }  # fmt: skip
    command = [str(cli), "run", "--json", *(str(part) for pair in flags.items() for part in pair)]
    if not layout.elastic:
        command.append("--no-elastic-threads")
    if cfg.prune != "none":
        command += ["--prune", cfg.prune]
    if cfg.fidelity != "none":
        command += ["--fidelity", cfg.fidelity]
    if run_cfg.timeout_s is not None:
        command += ["--timeout", f"{run_cfg.timeout_s:.3f}s"]
    env = {k: v for k, v in _plain_env().items() if k != "PREFECT_API_URL"}
    with tempfile.TemporaryDirectory(prefix="taxi-hpo-bench-") as cwd:
        called = time.time()
        proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd)
        command_s = time.time() - called
    if proc.returncode != 0:
        raise RuntimeError(
            f"taxi-hpo run failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}"
        )
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        **_from_summary(layout, repeat, summary, called),
        "command_s": round(command_s, 3),
        "called": called,
        "timeout_s": timeout_s,
    }


def _from_summary(layout, repeat: int, summary: dict, called: float) -> dict:
    params = summary.get("trial_params") or [None] * len(summary["trials"])
    records = [trial_record({**t, "params": p}) for t, p in zip(summary["trials"], params)]
    return {
        "layout": layout.name,
        "repeat": repeat,
        "slots": summary["slots"],
        "cores": layout.cores,
        "wall_s": summary["search_wall_s"],
        "flow_wall_s": summary["wall_s"],
        "search_started": summary.get("search_started"),
        "first_trial_s": _first_start(records, called),
        "parent_run_id": summary["parent_run_id"],
        "ended_on_timeout": summary.get("ended_on_timeout", False),
        # the command's steps (taxi_hpo.timeline), in seconds from its start
        "timeline": summary.get("timeline"),
        "trials": records,
    }


def _plain_env() -> dict:
    # A nanny of an earlier layout may have left its thread pins in this process's environment.
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    }


# -- where the CPU went --------------------------------------------------------------------------

ROLES = ("trials", "flow", "prefect_server", "other")


def process_role(pid: int, cmdline: list[str], root_pid: int) -> str:
    """Which part of a search a process of the benchmark's tree is."""
    text = " ".join(cmdline)
    if pid == root_pid or "taxi-hpo run" in text:
        return "flow"  # the bench itself, or a whole `taxi-hpo run` command's own process
    if "uvicorn" in text or "prefect.server" in text:
        return "prefect_server"
    if "reference_script.py" in text or "spawn_main" in text or "multiprocessing.forkserver" in text:
        # a Dask worker process (spawned, or forked from the fork server: the server's imports
        # are the workers'), or the reference script (all of it)
        return "trials"
    return "other"


class CpuSampler:
    """CPU seconds of this process and its descendants, by role, sampled twice a second.

    ``between(t0, t1)`` answers with the CPU each role used between two wall-clock times, so a
    run's search window can be cut out of a benchmark that runs many.
    """

    def __init__(self, interval_s: float = 0.5):
        import psutil

        self._psutil, self.interval_s = psutil, interval_s
        self._root = psutil.Process()
        self._samples: list[tuple[float, dict[int, tuple[str, float]]]] = []
        self._roles: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="taxi-hpo-cpu-sampler", daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._samples.append((time.time(), self._sample()))
            self._stop.wait(self.interval_s)

    def _sample(self) -> dict[int, float]:
        seen = {}
        for proc in [self._root, *self._children()]:
            try:
                times = proc.cpu_times()
                if proc.pid not in self._roles:
                    self._roles[proc.pid] = process_role(proc.pid, proc.cmdline(), self._root.pid)
                seen[proc.pid] = times.user + times.system
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied):
                continue
        return seen

    def _children(self) -> list:
        try:
            return self._root.children(recursive=True)
        except self._psutil.NoSuchProcess:
            return []

    def between(self, t0: float, t1: float) -> dict[str, float]:
        """CPU seconds per role between wall times ``t0`` and ``t1`` (nearest samples)."""
        if not self._samples:
            return {}
        first = min(self._samples, key=lambda s: abs(s[0] - t0))[1]
        last = min(self._samples, key=lambda s: abs(s[0] - t1))[1]
        used = {role: 0.0 for role in ROLES}
        for pid, cpu in last.items():
            used[self._roles.get(pid, "other")] += max(cpu - first.get(pid, 0.0), 0.0)
        return {role: round(value, 2) for role, value in used.items()}
