"""The benchmark: its arithmetic on synthetic timings, its flags, its pictures, one real run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from taxi_hpo import bench
from taxi_hpo.bench import BenchConfig, Layout, metrics
from taxi_hpo.errors import ConfigError
from taxi_hpo.search import TPESearcher, TrialOutcome, reference_space, run_search
from taxi_hpo.search.baseline import run_reference


def trial(trial_id, started, finished, fit_s, worker="w0", loss=1.0, error=None):
    return {
        "trial_id": trial_id,
        "started": started,
        "finished": finished,
        "fit_s": fit_s,
        "worker": worker,
        "loss": loss,
        "error": error,
        "params": {},
    }


def run(layout, repeat, wall_s, trials, slots=2, first_trial_s=None):
    return {
        "layout": layout,
        "repeat": repeat,
        "wall_s": wall_s,
        "slots": slots,
        "trials": trials,
        "first_trial_s": first_trial_s,
        "cores": 2,
    }


# -- layouts -------------------------------------------------------------------------------------


def test_parse_layouts_reads_the_references_and_w_x_t():
    layouts = bench.parse_layouts(" script, seq, 2x1 ,1X2,4x3-fixed", cores=2)
    assert layouts == (
        Layout("script", 1, 2),
        Layout("seq", 1, 2),
        Layout("2x1", 2, 1),
        Layout("1x2", 1, 2),
        Layout("4x3-fixed", 4, 3, elastic=False),
    )
    assert [layout.cores for layout in layouts] == [2, 2, 2, 2, 12]
    assert (
        layouts[0].is_script and layouts[1].is_seq and layouts[2].is_parallel and not layouts[0].is_parallel
    )


def test_default_stands_for_what_taxi_hpo_run_picks():
    from taxi_hpo.core.machine import usable_cores

    cores = usable_cores()
    (default,) = bench.parse_layouts("default", cores)
    assert (default.name, default.workers, default.threads, default.elastic, default.default) == (
        f"{cores}x1",
        cores,
        1,
        True,
        True,
    )
    # named both ways: one layout, marked default
    assert bench.parse_layouts(f"default,{cores}x1", cores) == (default,)


@pytest.mark.parametrize(
    "text",
    ["2y1", "0x1", "2x0", "x2", "seq,", "", "2x1,2x1", "seq,SEQ", "-1x2", "2x1-elastic", "script,script"],
)
def test_parse_layouts_rejects_bad_items(text):
    with pytest.raises(ConfigError):
        bench.parse_layouts(text, cores=2)


def test_default_layouts_cover_the_cores():
    assert bench.default_layouts(1) == "script,seq,default,1x1-fixed"
    assert bench.default_layouts(2) == "script,seq,default,2x1-fixed,1x2"
    assert bench.default_layouts(16) == "script,seq,default,16x1-fixed,8x2,1x16"


# -- arithmetic ----------------------------------------------------------------------------------


def test_utilisation_is_busy_over_available_slot_seconds():
    trials = [
        trial(0, 100.0, 104.0, 3.0, "a"),
        trial(1, 100.0, 106.0, 5.5, "b"),
        trial(2, 104.0, 109.0, 4.0, "a"),
    ]
    assert metrics.utilisation(trials, slots=2, wall_s=10.0) == pytest.approx(15.0 / 20.0)
    assert metrics.utilisation(trials, slots=1, wall_s=15.0) == pytest.approx(1.0)
    assert metrics.utilisation(trials, slots=2, wall_s=0.0) is None
    assert metrics.utilisation([], slots=2, wall_s=5.0) == 0.0


def test_busy_time_never_negative():
    assert metrics.busy_s(trial(0, 0.0, 0.0, 0.0)) == 0.0
    assert metrics.busy_s(trial(0, 10.0, 9.0, 0.0)) == 0.0


def test_overheads_are_busy_minus_fit_for_finished_trials_only():
    trials = [
        trial(0, 0.0, 4.0, 3.5),
        trial(1, 0.0, 2.0, 1.0),
        trial(2, 0.0, 0.0, 0.0, loss=None, error="boom"),
        trial(3, 1.0, 3.0, 0.0, loss=None),
    ]
    assert metrics.overheads(trials) == pytest.approx([0.5, 1.0])


def test_percentile_interpolates_like_numpy():
    assert metrics.percentile([4.0, 1.0, 3.0, 2.0], 50) == pytest.approx(2.5)
    assert metrics.percentile([1.0, 2.0, 3.0, 4.0], 95) == pytest.approx(3.85)
    assert metrics.percentile([7.0], 95) == 7.0
    assert metrics.percentile([], 50) is None
    values = list(np.random.default_rng(0).exponential(size=37))
    for q in (0, 5, 50, 95, 100):
        assert metrics.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_trials_per_min_and_speedup():
    assert metrics.trials_per_min(8, 120.0) == pytest.approx(4.0)
    assert metrics.trials_per_min(8, 0.0) is None
    assert metrics.speedup(30.0, 12.0) == pytest.approx(2.5)
    assert metrics.speedup(None, 12.0) is None
    assert metrics.speedup(30.0, None) is None


def test_run_metrics_of_one_run():
    trials = [
        trial(0, 0.0, 4.0, 3.0, "a", loss=6.5),
        trial(1, 0.0, 6.0, 5.0, "b", loss=6.2),
        trial(2, 4.0, 8.0, 0.0, "a", loss=None, error="KilledWorker"),
    ]
    figures = metrics.run_metrics(run("2x1", 0, 8.0, trials, first_trial_s=3.5))
    assert figures["wall_s"] == 8.0
    assert figures["trials_per_min"] == pytest.approx(22.5)
    assert figures["utilisation"] == pytest.approx(14.0 / 16.0)
    assert figures["overhead_p50_s"] == pytest.approx(1.0)
    assert figures["overhead_p95_s"] == pytest.approx(1.0)
    assert figures["best_rmse"] == 6.2
    assert figures["trials_failed"] == 1
    assert figures["first_trial_s"] == 3.5


def test_summarise_pairs_speedup_with_the_same_repeat_and_takes_medians():
    runs = [
        run("seq", 0, 10.0, [trial(0, 0.0, 10.0, 9.0, loss=6.4)], slots=1),
        run("2x1", 0, 5.0, [trial(0, 0.0, 5.0, 4.0, loss=6.3)]),
        run("seq", 1, 12.0, [trial(0, 0.0, 12.0, 11.0, loss=6.4)], slots=1),
        run("2x1", 1, 8.0, [trial(0, 0.0, 8.0, 7.5, loss=6.5)]),
        run("seq", 2, 30.0, [trial(0, 0.0, 30.0, 29.0, loss=6.4)], slots=1),
        run("2x1", 2, 10.0, [trial(0, 0.0, 10.0, 9.0, loss=6.1)]),
    ]
    layouts = (Layout("seq", 1, 2), Layout("2x1", 2, 1), Layout("1x2", 1, 2))
    seq, par = metrics.summarise(runs, layouts)  # 1x2 has no runs: no row
    assert seq["speedup_vs_seq"] == 1.0 and seq["speedup_min"] == 1.0 and seq["speedup_max"] == 1.0
    assert seq["wall_s"] == 12.0 and seq["repeats"] == 3
    # per repeat 10/5, 12/8, 30/10 -> median 2.0; not median(seq)/median(2x1) = 12/8
    assert par["speedup_vs_seq"] == pytest.approx(2.0)
    assert (par["speedup_min"], par["speedup_max"]) == (pytest.approx(1.5), pytest.approx(3.0))
    assert par["wall_s"] == 8.0
    assert par["best_rmse"] == 6.3
    assert par["overhead_p50_s"] == pytest.approx(1.0)
    assert par["utilisation"] == pytest.approx(0.5)
    assert par["trials_per_min"] == pytest.approx(60.0 / 8.0)
    assert (par["workers"], par["threads"], par["cores"]) == (2, 1, 2)


def test_summarise_without_seq_has_no_speedup():
    rows = metrics.summarise([run("2x1", 0, 5.0, [trial(0, 0.0, 5.0, 4.0)])], (Layout("2x1", 2, 1),))
    assert rows[0]["speedup_vs_seq"] is None and rows[0]["speedup_min"] is None


def _row(layout, speedup, script=1.0, utilisation=0.98, overhead=0.1, rmse=6.3, default=False):
    return {
        "layout": layout,
        "speedup_vs_seq": speedup,
        "speedup_vs_script": script,
        "core_utilisation": utilisation,
        "overhead_p50_s": overhead,
        "best_rmse": rmse,
        "default": default,
    }


def test_goal_checks_judge_the_default_layout_and_give_the_gap():
    rows = [
        _row("seq", 1.0, rmse=6.35),
        _row("2x1", 0.97, script=0.93, utilisation=0.95, overhead=0.4, rmse=6.30, default=True),
        _row("1x2", 1.1),
    ]
    goals = {g["goal"]: g for g in metrics.goal_checks(rows, cores=2, mode="async")}
    assert {g["layout"] for g in goals.values()} == {"2x1"}  # the default, though 1x2 is faster
    assert goals["speedup_vs_seq"]["met"] is False and goals["speedup_vs_seq"]["gap"] == pytest.approx(-0.03)
    assert goals["speedup_vs_script"]["met"] is False and goals["speedup_vs_script"]["gap"] == pytest.approx(
        -0.02
    )
    assert goals["core_utilisation"]["met"] is False and goals["core_utilisation"]["gap"] == pytest.approx(
        -0.02
    )
    assert goals["overhead_p50_s"]["met"] is False and goals["overhead_p50_s"]["gap"] == pytest.approx(0.15)
    assert goals["best_rmse_minus_seq"]["met"] is True
    assert goals["best_rmse_minus_seq"]["measured"] == pytest.approx(-0.05)
    # no default marked: the fastest parallel layout; 16 cores ask for 1.6x; batch for 0.9
    rows = [_row("seq", 1.0), _row("16x1", 1.7, utilisation=0.92), _row("8x2", 1.2)]
    batch = {g["goal"]: g for g in metrics.goal_checks(rows, cores=16, mode="batch")}
    assert batch["speedup_vs_seq"]["layout"] == "16x1" and batch["speedup_vs_seq"]["target"] == ">= 1.6"
    assert batch["speedup_vs_seq"]["met"] is True and batch["core_utilisation"]["met"] is True
    assert metrics.goal_checks([_row("2x1", None)], cores=2, mode="async") == []


def test_core_utilisation_counts_the_cores_a_trial_took():
    # 2 cores, 10 s: trial a busy 0-10 s on one thread; trial b 0-4 s on one thread, then idle slot;
    # a took the idle core for its last 6 s: 4 + 6 * 2 = 16 thread-seconds over 10 s of training.
    a = {**trial(0, 0.0, 10.0, 10.0, "a"), "train_s": 10.0, "threads_mean": 1.6}
    b = {**trial(1, 0.0, 4.0, 4.0, "b"), "train_s": 4.0, "threads_mean": 1.0}
    assert metrics.utilisation([a, b], 2, 10.0) == pytest.approx(0.7)
    assert metrics.core_utilisation([a, b], 2, 10.0, base_threads=1) == pytest.approx(1.0)


def test_summarise_pairs_the_script_and_whole_commands():
    runs = [
        run("script", 0, 10.0, [trial(0, 0.0, 10.0, 9.0)], slots=1) | {"command_s": 12.0},
        run("2x1", 0, 8.0, [trial(0, 0.0, 8.0, 7.0)]) | {"command_s": 15.0},
    ]
    (script, par) = metrics.summarise(runs, (Layout("script", 1, 2), Layout("2x1", 2, 1)))
    assert par["speedup_vs_script"] == pytest.approx(1.25) and par["speedup_vs_seq"] is None
    assert par["command_speedup_vs_script"] == pytest.approx(0.8) and par["command_s"] == 15.0
    assert script["speedup_vs_script"] == 1.0 and script["elastic"] is None


def test_time_to_target_as_users_feel_it_counts_complete_fits_from_the_command_s_launch():
    def fit(trial_id, finished, loss, complete=True):
        return trial(trial_id, finished - 1, finished, 1.0, loss=loss) | {"fidelity": {"complete": complete}}

    # the script: launched at 100, its search from 102; best 6.5 at 110, the command took 30 s
    script = run("script", 0, 20.0, [fit(0, 105, 7.0), fit(1, 110, 6.5)], slots=1)
    script |= {"command_s": 30.0, "called": 100.0, "search_started": 102.0}
    # a ladder search launched at 100: a screened fit below the target does not count
    ladder = run("2x1", 0, 25.0, [fit(0, 104, 6.4, complete=False), fit(1, 108, 6.6), fit(2, 112, 6.45)])
    ladder |= {"command_s": 40.0, "called": 100.0, "search_started": 103.0}
    rows = {
        r["layout"]: r
        for r in metrics.summarise([script, ladder], (Layout("script", 1, 2), Layout("2x1", 2, 1)))
    }
    assert rows["script"]["time_to_target_s"] == 8.0 and rows["script"]["command_time_to_target_s"] == 10.0
    assert rows["2x1"]["time_to_target_s"] == 9.0 and rows["2x1"]["command_time_to_target_s"] == 12.0
    assert rows["2x1"]["command_speedup_to_target"] == pytest.approx(10 / 12, abs=1e-4)
    assert rows["2x1"]["best_rmse"] == 6.45 and rows["2x1"]["trials_complete"] == 2
    # within the script's whole command (30 s from launch): 6.45, 0.77 % better than its 6.5
    assert rows["2x1"]["best_in_reference_command_s"] == 6.45
    assert rows["2x1"]["best_gap_in_reference_command_pct"] == pytest.approx(100 * (6.45 / 6.5 - 1), abs=1e-3)
    # it reached the target 12 s from launch, within the script's 30 s; the script itself too
    assert rows["2x1"]["target_reached_in_reference_command"] == 1
    late = ladder | {"called": 80.0}  # launched 20 s earlier: its 6.45 came 32 s in
    assert (
        metrics.summarise([script, late], (Layout("script", 1, 2), Layout("2x1", 2, 1)))[1][
            "target_reached_in_reference_command"
        ]
        == 0
    )
    assert (
        metrics.best_by(ladder, 11.0, whole=True) == 6.6 and metrics.best_by(ladder, 3.0, whole=True) is None
    )


def test_cpu_beside_the_trials():
    cpu = {"trials": 90.0, "flow": 6.0, "prefect_server": 4.0, "other": 0.0}
    assert metrics.run_metrics(run("2x1", 0, 50.0, [trial(0, 0, 1, 1)]) | {"cpu_s": cpu})[
        "cpu_beside_trials"
    ] == pytest.approx(0.1)
    # seq's trials run in the benchmark's own process
    seq = run("seq", 0, 50.0, [trial(0, 0, 1, 1)], slots=1) | {"cpu_s": {**cpu, "trials": 0.0, "flow": 96.0}}
    assert metrics.run_metrics(seq)["cpu_beside_trials"] == pytest.approx(0.04)


def test_process_roles():
    from taxi_hpo.bench.runs import process_role

    assert process_role(10, ["python", "taxi-hpo", "bench"], root_pid=10) == "flow"
    assert process_role(11, ["/v/bin/python", "/v/bin/taxi-hpo", "run", "--json"], root_pid=10) == "flow"
    assert (
        process_role(12, ["python", "-c", "import runpy", "uvicorn", "--factory"], root_pid=10)
        == "prefect_server"
    )
    assert process_role(13, ["python", "-c", "from multiprocessing.spawn import spawn_main"], 10) == "trials"
    forked = ["python", "-c", "from multiprocessing.forkserver import main; main(3, 4, ['distributed'])"]
    assert process_role(16, forked, 10) == "trials"  # a forked worker, or the fork server's imports
    assert process_role(14, ["python", "/x/reference_script.py", "--train"], 10) == "trials"
    assert process_role(15, ["sh"], 10) == "other"


# -- flags ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"trials": 0},
        {"trials": -3},
        {"repeats": 0},
        {"rounds": 0},
        {"mode": "eager"},
        {"max_depth": 3},
        {"layouts": ()},
        {"prune": "asha", "prune_trials": 0},
        {"prune_trials": 16},
        {"fidelity": "auto"},  # seq is the reference's own fmin loop: no ladder there
        {"fidelity": "pixels"},
        {"timeout": "script"},  # the script's time is the budget: the script must run first
        {"timeout": "script", "layouts": (Layout("2x1", 2, 1), Layout("script", 1, 2))},
        {"timeout": -5.0},
    ],
)
def test_bench_config_rejects_bad_settings(changes):
    settings = {"layouts": (Layout("seq", 1, 2), Layout("2x1", 2, 1)), **changes}
    with pytest.raises(ConfigError):
        BenchConfig(**settings)


def test_prune_trials_size_the_pruned_searches_only():
    layouts = (Layout("seq", 1, 2), Layout("2x1", 2, 1))
    pruned = BenchConfig(layouts=layouts, trials=8, prune="median", prune_trials=20)
    assert pruned.layout_trials == 20 and pruned.run_config(layouts[1]).trials == 20
    assert pruned.trials == 8 and pruned.describe()["prune_trials"] == 20  # the script's budget
    assert BenchConfig(layouts=layouts, trials=8, prune="asha").run_config(layouts[0]).trials == 8


def test_timeout_script_gives_each_repeat_the_script_s_own_time():
    layouts = (Layout("script", 1, 2), Layout("2x1", 2, 1))
    runs = [
        {"layout": "script", "repeat": 0, "wall_s": 90.0, "command_s": 95.0},
        {"layout": "2x1", "repeat": 0, "wall_s": 80.0, "command_s": 99.0},
        {"layout": "script", "repeat": 1, "wall_s": 70.0, "command_s": 72.5},
    ]
    whole = BenchConfig(layouts=layouts, whole=True, timeout="script")
    assert whole.budget_s(runs, 0) == 95.0 and whole.budget_s(runs, 1) == 72.5
    assert BenchConfig(layouts=layouts, timeout="script").budget_s(runs, 1) == 70.0  # its search
    fixed = BenchConfig(layouts=layouts, timeout=30.0)
    assert fixed.budget_s(runs, 1) == 30.0 and fixed.run_config(layouts[1], 30.0).timeout_s == 30.0
    assert BenchConfig(layouts=layouts).budget_s(runs, 0) is None


@pytest.mark.parametrize(
    "flags",
    [
        ["--layouts", "2by1"],
        ["--trials", "0"],
        ["--layouts", "seq,2x1,seq"],
        ["--layouts", "2x1-elastic"],
        ["--timeout", "soon"],
        ["--layouts", "seq,script", "--timeout", "script"],
    ],
)
def test_cli_bad_flags_print_one_line_and_exit_2(flags, capsys, tmp_path):
    from taxi_hpo import cli

    assert cli.main(["bench", *flags, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("taxi-hpo: error:") and "\n" not in err
    assert not (tmp_path / "bench.json").exists()


# -- the baseline --------------------------------------------------------------------------------


def _quadratic(params: dict) -> float:
    return (params["learning_rate"] - 0.3) ** 2 + params["max_depth"] / 100.0


def test_reference_fmin_suggests_what_the_searcher_suggests_one_at_a_time():
    space = reference_space(20)
    seen: list[dict] = []

    def evaluate(trial_id, params):
        seen.append(params)
        loss = None if trial_id == 3 else _quadratic(params)  # a failure is told, not raised
        return TrialOutcome(trial_id, params, loss, error=None if loss is not None else "boom")

    outcomes = run_reference(space, evaluate, 24, seed=7)  # past the 20 random start-up trials
    assert [o.trial_id for o in outcomes] == list(range(24))
    assert outcomes[3].loss is None and all(o.ok for o in outcomes if o.trial_id != 3)

    class Inline:
        def __init__(self):
            self.done = {}

        def submit(self, trial_id, params, priority):
            self.done[trial_id] = evaluate(trial_id, params)
            return trial_id

        def wait_any(self, handles):
            return list(handles)

        def outcome(self, handle):
            return self.done.pop(handle)

    reference_params = list(seen)
    seen.clear()
    run_search(TPESearcher(space, seed=7), Inline(), 24, in_flight=1)
    assert seen == reference_params


def test_reference_rejects_an_empty_budget():
    with pytest.raises(ValueError):
        run_reference(reference_space(20), lambda i, p: TrialOutcome(i, p, 1.0), 0, seed=1)


# -- pictures and table --------------------------------------------------------------------------


def _synthetic_result():
    runs = [
        run(
            "seq",
            0,
            10.0,
            [trial(0, 0.0, 5.0, 4.5, "p:1", 6.4), trial(1, 5.0, 10.0, 4.5, "p:1", 6.3)],
            slots=1,
        ),
        run("2x1", 0, 6.0, [trial(0, 1.0, 6.0, 4.0, "a", 6.4), trial(1, 1.0, 4.0, 0.0, "b", None, "boom")]),
        run("4x1", 0, 6.0, [trial(0, 1.0, 6.0, 4.0, "a", 6.4)], slots=4),
    ]
    layouts = (Layout("seq", 1, 2), Layout("2x1", 2, 1), Layout("4x1", 4, 1))
    rows = metrics.summarise(runs, layouts)
    return {
        "machine": {"cores": 2},
        "runs": runs,
        "layouts": rows,
        "goals": metrics.goal_checks(rows, 2, "async"),
        "settings": {"trials": 2, "rounds": 3, "max_depth": 5, "mode": "async", "seed": 1, "repeats": 1},
    }


def test_pictures_are_written(tmp_path):
    result = _synthetic_result()
    from taxi_hpo.bench import plots as bench_plots

    bench_plots.plot_speedup(result, tmp_path / "speedup.png")
    bench_plots.plot_timeline(result, tmp_path / "timeline.png")
    for name in ("speedup.png", "timeline.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_lists_every_layout_and_the_missed_goals():
    text = bench.format_table(_synthetic_result())
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["layout", "wall_s", "command_s", "speedup_vs_seq"]
    assert [line.split()[0] for line in lines[1:4]] == ["seq", "2x1", "4x1"]
    assert any(line.startswith("goal missed: core_utilisation >= 0.97 on 2x1") for line in lines)
    assert not any(line.startswith("goal missed: speedup") for line in lines)  # 10 / 6 >= 1.0


# -- one real run --------------------------------------------------------------------------------


@pytest.mark.integration
def test_bench_runs_seq_and_a_parallel_layout(data_dir, prefect_api_url, workdir, capsys):
    from taxi_hpo import cli, tracking

    out = workdir / "bench-out"
    code = cli.main(
        [
            "bench",
            "--layouts",
            "script,seq,2x1",
            "--trials",
            "2",
            "--rounds",
            "3",
            "--max-depth",
            "5",
            "--data-dir",
            str(data_dir),
            "--out",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    for name in ("bench.json", "speedup.png", "timeline.png"):
        assert (out / name).stat().st_size > 0
    saved = json.loads((out / "bench.json").read_text())
    assert printed["layouts"] == saved["layouts"]
    assert printed["machine"]["cores"] >= 1 and "xgboost" in "".join(printed["machine"]["packages"])
    rows = {row["layout"]: row for row in printed["layouts"]}
    assert list(rows) == ["script", "seq", "2x1"]
    assert rows["seq"]["speedup_vs_seq"] == 1.0
    runs = {r["layout"]: r for r in saved["runs"]}
    # The reference script, a command of its own: the same points and the same models as seq.
    script = runs.pop("script")
    assert script["command_s"] > script["wall_s"] > 0
    assert [t["params"]["max_depth"] for t in script["trials"]] == [
        t["params"]["max_depth"] for t in runs["seq"]["trials"]
    ]
    assert [t["loss"] for t in script["trials"]] == pytest.approx(
        [t["loss"] for t in runs["seq"]["trials"]], rel=1e-9
    )
    assert rows["2x1"]["speedup_vs_script"] == pytest.approx(
        script["wall_s"] / runs["2x1"]["wall_s"], rel=1e-3
    )
    # Where the CPU went during each search, by role.
    assert runs["2x1"]["cpu_s"]["trials"] > 0 and set(runs["2x1"]["cpu_s"]) == {
        "trials",
        "flow",
        "prefect_server",
        "other",
    }
    rows.pop("script")
    assert rows["2x1"]["speedup_vs_seq"] == pytest.approx(
        runs["seq"]["wall_s"] / runs["2x1"]["wall_s"], rel=1e-3
    )
    for name, row in rows.items():
        trials = runs[name]["trials"]
        assert len(trials) == 2 and all(t["loss"] is not None and t["fit_s"] > 0 for t in trials)
        assert row["best_rmse"] == pytest.approx(min(t["loss"] for t in trials), abs=1e-4)
        assert row["trials_per_min"] == pytest.approx(120.0 / row["wall_s"], rel=1e-3)
        assert 0 < row["utilisation"] <= 1.0 + 1e-6
        assert 0 <= row["overhead_p50_s"] <= row["overhead_p95_s"]
        assert not math.isnan(row["best_rmse"])
    assert len({t["worker"] for t in runs["seq"]["trials"]}) == 1
    # Each taxi-hpo run's timeline: its steps, in order, in seconds from the bench's call of it.
    steps = runs["2x1"]["timeline"]
    order = ["flow_started", "data_prepared", "cluster_connected", "first_trial_started", "last_trial_ended"]
    assert [step for step in steps if step in order] == order, steps
    assert steps["flow_started"] >= 0  # from the call of the search, not from the bench's start
    # the baseline logs its trials like the parallel search: one FINISHED child run per trial
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    for name in rows:
        children = tracking.child_runs(uri, runs[name]["parent_run_id"], status="FINISHED")
        assert len([c for c in children if c.data.tags.get(tracking.TRIAL_TAG) is not None]) == 2


@pytest.mark.integration
def test_bench_prunes_every_layout_but_the_script(data_dir, prefect_api_url, workdir, capsys):
    from taxi_hpo import cli

    out = workdir / "bench-prune"
    code = cli.main(
        [
            "bench",
            "--layouts",
            "script,seq",
            "--trials",
            "2",
            "--prune",
            "asha",
            "--prune-trials",
            "6",
            "--rounds",
            "4",
            "--max-depth",
            "5",
            "--data-dir",
            str(data_dir),
            "--out",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    runs = {r["layout"]: r for r in json.loads((out / "bench.json").read_text())["runs"]}
    assert len(runs["script"]["trials"]) == 2 and len(runs["seq"]["trials"]) == 6
    assert all(t["pruned_at"] is None for t in runs["script"]["trials"])
    # 4 rounds: one checkpoint (round 2), judged once three trials have reached it; one trial
    # at a time, so the same trials prune each time, and some do
    pruned = [t for t in runs["seq"]["trials"] if t["pruned_at"] is not None]
    assert pruned and all(t["pruned_at"] == 2 and t["trial_id"] >= 3 for t in pruned)
    rows = {row["layout"]: row for row in printed["layouts"]}
    assert rows["script"]["speedup_to_target"] == 1.0 and rows["script"]["time_to_target_s"] > 0
    assert rows["seq"]["trials_pruned"] == len(pruned)


@pytest.mark.integration
def test_bench_times_whole_commands(data_dir, workdir, capsys):
    from taxi_hpo import cli

    out = workdir / "bench-whole"
    code = cli.main(
        [
            "bench",
            "--layouts",
            "script,2x1",
            "--whole",
            "--fidelity",
            "auto",
            "--prune-trials",
            "400",
            "--timeout",
            "script",
            "--trials",
            "2",
            "--rounds",
            "3",
            "--max-depth",
            "5",
            "--data-dir",
            str(data_dir),
            "--out",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    rows = {row["layout"]: row for row in json.loads(capsys.readouterr().out)["layouts"]}
    run = next(r for r in json.loads((out / "bench.json").read_text())["runs"] if r["layout"] == "2x1")
    # the whole `taxi-hpo run`: its own Prefect server and cluster, the baseline, registration
    assert run["command_s"] > run["flow_wall_s"] > run["wall_s"] > 0
    assert rows["2x1"]["command_speedup_vs_script"] == pytest.approx(
        rows["script"]["command_s"] / run["command_s"], rel=1e-3
    )
    # --timeout script: the search's budget was the script's whole command, and it ended on it,
    # long before its 400 fits; the first fits at the cheap rung (1/9 of the rows, 3 rounds here)
    script = next(r for r in json.loads((out / "bench.json").read_text())["runs"] if r["layout"] == "script")
    assert run["timeout_s"] == pytest.approx(script["command_s"], abs=1e-3) and run["ended_on_timeout"]
    assert 2 <= len(run["trials"]) < 400 and run["trials"][0]["fidelity"]["rung"] == 0
    assert rows["2x1"]["trials_complete"] == sum(t["fidelity"]["complete"] for t in run["trials"])


# -- the sample-efficiency study's pure parts -----------------------------------------------------


def _study():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "sample_efficiency.py"
    spec = importlib.util.spec_from_file_location("sample_efficiency", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_study_runs_k_in_flight_with_fifo_completion():
    from hyperopt.base import JOB_STATE_NEW

    study = _study()
    order, pending_at_suggest = [], []

    def evaluate(trial_id, params):
        order.append(trial_id)
        return TrialOutcome(trial_id, params, None if trial_id == 2 else _quadratic(params))

    class Spy(TPESearcher):
        def suggest(self, trial_id):
            pending_at_suggest.append(sum(1 for d in self.trials.trials if d["state"] == JOB_STATE_NEW))
            return super().suggest(trial_id)

    runner = study.FifoRunner(evaluate)
    outcomes = run_search(Spy(reference_space(10), 3), runner, 9, in_flight=3)
    assert order == list(range(9))  # oldest first
    assert pending_at_suggest == [0, 1, 2, 2, 2, 2, 2, 2, 2]  # k - 1 liars once the pipe is full
    assert [o.trial_id for o in outcomes] == list(range(9)) and outcomes[2].loss is None


def test_study_best_so_far_checkpoints_and_table():
    study = _study()
    assert study.best_so_far([None, 3.0, 4.0, None, 2.0]) == [None, 3.0, 3.0, 3.0, 2.0]
    assert study.checkpoints(32) == [4, 8, 16, 32] and study.checkpoints(6) == [4, 6]
    curves = {
        1: [[5.0, 4.0, 4.0, 4.0], [6.0, 6.0, 5.0, 2.0]],
        4: [[5.0, 5.0, 5.0, 3.3], [6.0, 6.0, 6.0, 3.3]],
    }
    table = study.markdown_table(curves, 4)
    rows = [line for line in table.splitlines() if line.startswith("| 1 ") or line.startswith("| 4 ")]
    assert rows[0] == "| 1 | 3.0000 ± 1.4142 | +0.00 % |"
    assert rows[1] == "| 4 | 3.3000 ± 0.0000 | +10.00 % |"


def test_study_replays_a_pruning_decision_on_a_fitted_curve():
    study = _study()
    params = {"max_depth": 9, "learning_rate": 0.1}
    cache = {
        json.dumps(params, sort_keys=True): {
            "loss": 6.0,
            "curve": {"3": 7.0, "9": 6.5, "27": 6.1},
            "rounds": 30,
        }
    }
    spent: list[int] = []
    evaluate = study.xgboost_evaluator(None, 30, 1, cache, spent)  # cached: nothing is fitted
    pruned = evaluate(0, params, {3: math.inf, 9: 6.4, 27: math.inf})
    assert (pruned.pruned_at, pruned.loss, pruned.curve) == (9, 6.5, {3: 7.0, 9: 6.5})
    full = evaluate(1, params, {3: math.inf, 9: math.inf, 27: math.inf})
    assert (full.pruned_at, full.loss) == (None, 6.0) and spent == [9, 30]
    # a search under a rule: thresholds asked at submission, pruned losses hidden from the curve
    from taxi_hpo.search.pruning import Pruner

    def synthetic(trial_id, params, thresholds):
        curve = {
            3: 8.0 + params["learning_rate"],
            9: 7.0 + params["learning_rate"],
            27: 6.0 + params["learning_rate"],
        }
        for r in sorted(curve):
            if curve[r] > thresholds.get(r, math.inf):
                return TrialOutcome(
                    trial_id, params, curve[r], curve={k: v for k, v in curve.items() if k <= r}, pruned_at=r
                )
        return TrialOutcome(trial_id, params, curve[27], curve=curve)

    losses = study.losses_in_flight(synthetic, 2, 12, 3, 20, pruner=Pruner("asha", 30))
    assert len(losses) == 12 and None in losses[3:] and all(loss is not None for loss in losses[:2])


def test_time_to_target_follows_the_best_so_far_and_ignores_pruned_trials():
    start = 100.0
    trials = [
        {**trial(0, 100.0, 104.0, 4.0, loss=6.6), "pruned_at": None},
        {**trial(1, 100.0, 103.0, 2.0, loss=6.0), "pruned_at": 9},  # pruned: an unfinished model
        {**trial(2, 104.0, 110.0, 6.0, loss=6.4), "pruned_at": None},
        {**trial(3, 103.0, 112.0, 9.0, loss=6.5), "pruned_at": None},
    ]
    run_ = run("2x1", 0, 12.0, trials) | {"search_started": start}
    assert metrics.best_so_far(run_) == [(4.0, 6.6), (10.0, 6.4)]
    assert metrics.time_to_target(run_, 6.45) == 10.0 and metrics.time_to_target(run_, 6.0) is None
    script = run(
        "script", 0, 20.0, [{**trial(0, 100.0, 118.0, 18.0, loss=6.4), "pruned_at": None}], slots=1
    ) | {"search_started": start}
    (ref, par) = metrics.summarise([script, run_], (Layout("script", 1, 2), Layout("2x1", 2, 1)))
    # the target is the script's final best, 6.4: reached after 18 s there, 10 s here
    assert par["time_to_target_s"] == 10.0 and par["speedup_to_target"] == pytest.approx(1.8)
    assert par["trials_pruned"] == 1 and par["target_reached"] == 1
    assert (
        metrics.summarise([script, run_], (Layout("2x1", 2, 1),), target=6.0)[0]["time_to_target_s"] is None
    )
    # a given target needs no reference layout in the bench (the script's best from an earlier run)
    (alone,) = metrics.summarise([run_], (Layout("2x1", 2, 1),), target=6.45)
    assert alone["time_to_target_s"] == 10.0 and alone["target_reached"] == 1
    assert alone["trials_failed"] == 0  # a pruned trial did not fail


def test_warm_start_study_counts_trials_to_the_cold_final_best():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "warm_start.py"
    spec = importlib.util.spec_from_file_location("warm_start", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.first_reaching([None, 7.0, 6.5, 6.5, 6.2], 6.5) == 3
    assert module.first_reaching([7.0, 6.9], 6.5) is None


def test_rungs_study_rank_correlation_is_spearmans():
    """benchmarks/rungs.py's figure (rank correlation of the RMSE at a round with the final one)."""
    import importlib.util
    import random
    from pathlib import Path

    from scipy.stats import spearmanr

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "rungs.py"
    spec = importlib.util.spec_from_file_location("rungs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.spearman([1.0, 2.0, 3.0], [10.0, 20.0, 35.0]) == pytest.approx(1.0)
    assert module.spearman([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    rng = random.Random(1)
    a, b = [rng.random() for _ in range(40)], [rng.random() for _ in range(40)]
    assert module.spearman(a, b) == pytest.approx(spearmanr(a, b).correlation)
