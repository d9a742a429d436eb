"""The benchmark's arithmetic on trial timings (pure): utilisations, overheads, speedups paired
within a repeat, time to a target RMSE, the per-layout table and the issue's goals.

Takes the plain dicts of ``bench.json`` (runs of trials); ``bench`` runs them, ``bench_plots``
draws them.
"""

from __future__ import annotations

import math
import statistics

SEQ = "seq"
SCRIPT = "script"


# -- arithmetic on trial timings (pure) ----------------------------------------------------------


def busy_s(trial: dict) -> float:
    """Seconds the trial's slot was busy with it."""
    return max(trial["finished"] - trial["started"], 0.0)


def _ok(trial: dict) -> bool:
    return trial.get("loss") is not None and not trial.get("error")


def _complete(trial: dict) -> bool:
    """A trial whose RMSE is a complete model's: not failed, not pruned, not a lower rung."""
    return (
        _ok(trial) and trial.get("pruned_at") is None and (trial.get("fidelity") or {}).get("complete", True)
    )


def utilisation(trials: list[dict], slots: int, wall_s: float) -> float | None:
    """Busy slot-seconds over available slot-seconds (1.0: no slot ever idle)."""
    if slots <= 0 or wall_s <= 0:
        return None
    return sum(busy_s(t) for t in trials) / (slots * wall_s)


def overheads(trials: list[dict]) -> list[float]:
    """Per finished trial: slot busy time minus XGBoost train+predict time."""
    return [busy_s(t) - t["fit_s"] for t in trials if _ok(t)]


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100), linear between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def trials_per_min(n_trials: int, wall_s: float) -> float | None:
    """Trials per minute: ``n_trials`` in ``wall_s`` seconds; None when ``wall_s`` is not
    positive."""
    return 60.0 * n_trials / wall_s if wall_s > 0 else None


def speedup(base_wall_s: float | None, wall_s: float | None) -> float | None:
    """How many times faster than the base (2.0: half the wall time)."""
    if not base_wall_s or not wall_s:
        return None
    return base_wall_s / wall_s


def _median(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def core_seconds(trial: dict, base_threads: int) -> float:
    """Core-seconds a trial's slot gave to it: XGBoost's training on its (elastic) threads, the
    rest of its busy time (predictions, logging) on the base threads."""
    busy = busy_s(trial)
    train = min(trial.get("train_s") or trial.get("fit_s") or 0.0, busy)
    threads = trial.get("threads_mean") or base_threads
    return train * threads + (busy - train) * base_threads


def core_utilisation(trials: list[dict], cores: int, wall_s: float, base_threads: int) -> float | None:
    """Core-seconds given to trials over the cores' seconds (1.0: no core ever idle). Unlike
    ``utilisation`` it counts a slot's idle core as used when a running trial took it."""
    if cores <= 0 or wall_s <= 0:
        return None
    return sum(core_seconds(t, base_threads) for t in trials) / (cores * wall_s)


def run_metrics(run: dict) -> dict:
    """The table's figures for one run of one layout."""
    trials, wall = run["trials"], run["wall_s"]
    spent = overheads(trials)
    losses = [t["loss"] for t in trials if _complete(t)]  # a pruned or low-rung RMSE is no model's
    base = max(1, run.get("cores", 1) // max(run["slots"], 1))
    return {
        "wall_s": wall,
        "command_s": run.get("command_s"),
        "trials_per_min": trials_per_min(len(trials), wall),
        "utilisation": utilisation(trials, run["slots"], wall),
        "core_utilisation": core_utilisation(trials, run.get("cores", run["slots"]), wall, base),
        "overhead_p50_s": percentile(spent, 50),
        "overhead_p95_s": percentile(spent, 95),
        "best_rmse": min(losses) if losses else None,
        "trials_failed": sum(not _ok(t) for t in trials),  # pruned and screened fits did not fail
        "first_trial_s": run.get("first_trial_s"),
        "cpu_beside_trials": _beside(run.get("cpu_s"), in_process=run["layout"] == SEQ),
    }


def _beside(cpu: dict | None, in_process: bool = False) -> float | None:
    """Share of the CPU used during the search that did not go to the trials' processes
    (``in_process``: the trials ran in the benchmark's own process, as ``seq``'s do)."""
    if not cpu or not sum(cpu.values()):
        return None
    trials = cpu.get("trials", 0.0) + (cpu.get("flow", 0.0) if in_process else 0.0)
    return 1.0 - trials / sum(cpu.values())


def best_so_far(run: dict, whole: bool = False) -> list[tuple[float, float]]:
    """``(seconds into the search, best RMSE so far)`` as each finished trial improved it; a
    pruned trial's (or a lower rung's) RMSE is of an unfinished model and does not count.
    ``whole``: seconds since the command was launched (``called``: whole commands and the script)."""
    start = (run.get("called") if whole else run.get("search_started")) or 0.0
    points, best = [], math.inf
    for t in sorted(
        (t for t in run["trials"] if _complete(t) and t.get("finished")), key=lambda t: t["finished"]
    ):
        if t["loss"] < best:
            best = t["loss"]
            points.append((t["finished"] - start, best))
    return points


def time_to_target(run: dict, target: float | None, whole: bool = False) -> float | None:
    """Seconds into the search (``whole``: since the command was launched, where it was timed
    whole) when the best-so-far first reached ``target`` (None: never)."""
    if target is None or (whole and not run.get("called")):
        return None
    return next((s for s, best in best_so_far(run, whole) if best <= target + 1e-12), None)


def best_by(run: dict, seconds: float | None, whole: bool = False) -> float | None:
    """The best complete RMSE ``seconds`` into the search (``whole``: since the command was
    launched); None when nothing had completed by then (or no time is given)."""
    if seconds is None or (whole and not run.get("called")):
        return None
    return min((best for s, best in best_so_far(run, whole) if s <= seconds), default=None)


def reference_targets(runs: list[dict], target: float | None = None) -> dict[int, float | None]:
    """Per repeat, the RMSE every layout races to: ``target`` when given, else the final best of
    the reference of that repeat (the script, which never prunes; seq without a script)."""
    if target is not None:  # given: every repeat races to it, with or without a reference layout
        return {r["repeat"]: target for r in runs}
    targets: dict[int, float | None] = {}
    for ref in (SEQ, SCRIPT):  # the script overrides seq
        for r in runs:
            if r["layout"] == ref:
                losses = [t["loss"] for t in r["trials"] if _complete(t)]
                targets[r["repeat"]] = min(losses) if losses else None
    return targets


def summarise(runs: list[dict], layouts: tuple, target: float | None = None) -> list[dict]:
    """One row per layout: medians over repeats; speedups paired with seq (and the script) of
    the same repeat: the search's wall, and the whole command's where both were timed whole;
    time to the target RMSE (``reference_targets``) and its speedup over the reference's."""
    walls = {ref: {r["repeat"]: r["wall_s"] for r in runs if r["layout"] == ref} for ref in (SEQ, SCRIPT)}
    commands = {r["repeat"]: r.get("command_s") for r in runs if r["layout"] == SCRIPT}
    targets = reference_targets(runs, target)
    reference = SCRIPT if any(r["layout"] == SCRIPT for r in runs) else SEQ
    ref_time = {
        r["repeat"]: time_to_target(r, targets.get(r["repeat"])) for r in runs if r["layout"] == reference
    }
    ref_command = {r["repeat"]: r for r in runs if r["layout"] == reference and r.get("called")}
    ref_command_time = {
        r["repeat"]: time_to_target(r, targets.get(r["repeat"]), whole=True)
        for r in runs
        if r["layout"] == reference
    }
    rows = []
    for layout in layouts:
        mine = [r for r in runs if r["layout"] == layout.name]
        if not mine:
            continue
        metrics = [run_metrics(r) for r in mine]
        row = {
            "layout": layout.name,
            "workers": layout.workers,
            "threads": layout.threads,
            "cores": layout.cores,
            "elastic": layout.elastic if layout.is_parallel else None,
            "default": layout.default,
            "repeats": len(mine),
        }
        for key in metrics[0]:
            row[key] = _round(_median([m[key] for m in metrics]))
        for ref, suffix in ((SEQ, "seq"), (SCRIPT, "script")):
            speedups = [speedup(walls[ref].get(r["repeat"]), r["wall_s"]) for r in mine]
            present = [x for x in speedups if x is not None]
            row[f"speedup_vs_{suffix}"] = _round(_median(speedups))
            row[f"speedup_vs_{suffix}_min"] = _round(min(present)) if present else None
            row[f"speedup_vs_{suffix}_max"] = _round(max(present)) if present else None
        row["command_speedup_vs_script"] = _round(
            _median([speedup(commands.get(r["repeat"]), r.get("command_s")) for r in mine])
        )
        reached = [time_to_target(r, targets.get(r["repeat"])) for r in mine]
        row["time_to_target_s"] = _round(_median(reached))
        row["target_reached"] = sum(x is not None for x in reached)
        row["speedup_to_target"] = _round(
            _median([speedup(ref_time.get(r["repeat"]), x) for r, x in zip(mine, reached)])
        )
        # the same, as users feel it: from launching the command (whole commands and the script)
        command_reached = [time_to_target(r, targets.get(r["repeat"]), whole=True) for r in mine]
        row["command_time_to_target_s"] = _round(_median(command_reached))
        row["command_speedup_to_target"] = _round(
            _median([speedup(ref_command_time.get(r["repeat"]), x) for r, x in zip(mine, command_reached)])
        )
        # a budget equal to the reference's whole command: the best by then, against the reference's
        in_budget = [
            (best_by(r, ref_command[r["repeat"]]["command_s"], whole=True), targets.get(r["repeat"]))
            if r["repeat"] in ref_command
            else (None, None)
            for r in mine
        ]
        row["best_in_reference_command_s"] = _round(_median([b for b, _ in in_budget]))
        # how many repeats reached the target before the reference's whole command had ended
        row["target_reached_in_reference_command"] = sum(
            x is not None and r["repeat"] in ref_command and x <= ref_command[r["repeat"]]["command_s"]
            for r, x in zip(mine, command_reached)
        )
        row["best_gap_in_reference_command_pct"] = _round(
            _median([100 * (b / t - 1) if b is not None and t else None for b, t in in_budget])
        )
        row["trials_complete"] = _median([sum(_complete(t) for t in r["trials"]) for r in mine])
        row["trials_pruned"] = _median(
            [sum(t.get("pruned_at") is not None for t in r["trials"]) for r in mine]
        )
        row["speedup_min"], row["speedup_max"] = row["speedup_vs_seq_min"], row["speedup_vs_seq_max"]
        rows.append(row)
    return rows


def goal_checks(rows: list[dict], cores: int, mode: str) -> list[dict]:
    """Issue 8's goals, judged on the default layout (the fastest parallel one if none is
    marked default); ``gap`` says by how much a goal is missed."""
    seq = next((r for r in rows if r["layout"] == SEQ), None)
    parallel = [r for r in rows if r["layout"] not in (SEQ, SCRIPT) and r["speedup_vs_seq"] is not None]
    if seq is None or not parallel:
        return []
    judged = next((r for r in parallel if r.get("default")), None) or max(
        parallel, key=lambda r: r["speedup_vs_seq"]
    )
    rmse_gap = (
        judged["best_rmse"] - seq["best_rmse"]
        if judged["best_rmse"] is not None and seq["best_rmse"] is not None
        else None
    )
    goals = [
        ("speedup_vs_seq", ">=", 1.6 if cores >= 16 else 1.0, judged["speedup_vs_seq"]),
        ("speedup_vs_script", ">=", 0.95, judged.get("speedup_vs_script")),
        ("core_utilisation", ">=", 0.97 if mode == "async" else 0.9, judged.get("core_utilisation")),
        ("overhead_p50_s", "<=", 0.25, judged["overhead_p50_s"]),
        ("best_rmse_minus_seq", "<=", 0.0, rmse_gap),
    ]
    checks = []
    for name, op, target, measured in goals:
        if measured is None:
            continue
        met = measured >= target if op == ">=" else measured <= target
        checks.append(
            {
                "goal": name,
                "layout": judged["layout"],
                "target": f"{op} {target:g}",
                "measured": _round(measured),
                "met": met,
                "gap": _round(measured - target),
            }
        )
    return checks
