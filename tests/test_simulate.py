"""The scheduler simulator's arithmetic on synthetic costs, and the `plan` command on a synthetic bench."""

from __future__ import annotations

import json
import math

import pytest

from taxi_hpo import cli, plan
from taxi_hpo.search.simulate import (
    CostModel,
    NearestLoss,
    Overheads,
    Sample,
    SimLayout,
    SimulatedRunner,
    ThreadScaling,
    simulate,
)

NO_OVERHEAD = Overheads(flow_s=0.0, per_history_s=0.0, dispatch_s=0.0, after_s=0.0)


def point(depth: int, rate: float) -> dict:
    return {
        "max_depth": depth,
        "learning_rate": rate,
        "reg_alpha": 0.05,
        "reg_lambda": 0.01,
        "min_child_weight": 1.0,
    }


def fixed_costs(costs: dict[int, float], serial: float = 0.0) -> CostModel:
    """Trial i is point(i + 4, 0.1) and costs ``costs[i]`` one-thread seconds."""
    samples = [Sample(point(i + 4, 0.1), seconds) for i, seconds in costs.items()]
    return CostModel.fit(samples, rounds=10, scaling=ThreadScaling(serial))


def test_thread_scaling_is_amdahls_law():
    assert ThreadScaling(0.0).speedup(8) == 8.0
    assert ThreadScaling(0.5).speedup(1) == 1.0
    measured = ThreadScaling.from_speedup(16, 8.9)
    assert measured.speedup(16) == pytest.approx(8.9)
    assert 1.0 < measured.speedup(2) < 2.0
    with pytest.raises(ValueError):
        ThreadScaling.from_speedup(1, 1.0)


def test_cost_model_recovers_a_log_linear_law_and_replays_measured_points():
    law = lambda p: math.exp(0.5 + 1.2 * math.log(p["max_depth"]) + 0.7 * math.log(1 / p["learning_rate"]))
    points = [point(d, r) for d in (4, 8, 16, 32) for r in (0.05, 0.2, 0.8)]
    model = CostModel.fit([Sample(p, law(p)) for p in points], rounds=10)
    assert model.coef == pytest.approx((0.5, 1.2, 0.7), abs=1e-6)
    unseen = point(11, 0.33)
    assert model.one_thread_s(unseen) == pytest.approx(law(unseen), rel=1e-6)
    assert model.one_thread_s(unseen, rounds=20) == pytest.approx(2 * law(unseen), rel=1e-6)
    # A point measured on 2 threads of a scaling with serial share 0 cost twice as much on one.
    twice = CostModel.fit([Sample(point(6, 0.1), 3.0, threads=2)], rounds=10, scaling=ThreadScaling(0.0))
    assert twice.one_thread_s(point(6, 0.1)) == pytest.approx(6.0)


def run_two(elastic: bool, serial: float = 0.0):
    """Trials of 10 s and 2 s (one thread) on one host of 2 cores, two one-slot workers."""
    cost = fixed_costs({0: 10.0, 1: 2.0}, serial)
    runner = SimulatedRunner(
        cost, lambda p: 1.0, {"h": (2, 2, 1)}, base=1, elastic=elastic, overheads=NO_OVERHEAD
    )
    runner.submit(0, point(4, 0.1), 1.0)
    runner.submit(1, point(5, 0.1), 1.0)
    first = runner.wait_any([0, 1])
    short = runner.outcome(first[0])
    rest = runner.wait_any([0])
    return short, runner.outcome(rest[0])


def test_a_lone_trial_takes_the_idle_core_on_the_virtual_clock():
    short, long_fixed = run_two(elastic=False)
    assert short.trial_id == 1 and short.finished == pytest.approx(2.0)
    assert long_fixed.finished == pytest.approx(10.0)
    _, long_elastic = run_two(elastic=True)
    # 2 s on one thread (2 s of work done), then 8 s of work on 2 threads: 4 s more.
    assert long_elastic.finished == pytest.approx(6.0)
    assert long_elastic.metrics["threads_mean"] == pytest.approx((2 * 1 + 4 * 2) / 6)
    # Amdahl: with a serial share of 1/3, two threads are 1.5x, not 2x: 8 / 1.5 = 5.33 s more.
    _, sublinear = run_two(elastic=True, serial=1 / 3)
    assert sublinear.finished == pytest.approx(2.0 + 8.0 / 1.5)


def test_more_threads_than_cores_share_them():
    cost = fixed_costs({i: 4.0 for i in range(4)})
    runner = SimulatedRunner(
        cost, lambda p: 1.0, {"h": (2, 4, 1)}, base=1, elastic=False, overheads=NO_OVERHEAD
    )
    for i in range(4):
        runner.submit(i, point(i + 4, 0.1), 1.0)
    done = runner.wait_any([0, 1, 2, 3])
    assert sorted(done) == [0, 1, 2, 3]
    assert runner.now == pytest.approx(8.0)  # 4 threads on 2 cores: each at half speed


def test_overheads_delay_the_start_and_the_end():
    cost = fixed_costs({0: 1.0})
    runner = SimulatedRunner(
        cost, lambda p: 1.0, {"h": (1, 1, 1)}, overheads=Overheads(0.5, 0.0, 0.25, 0.125)
    )
    runner.submit(0, point(4, 0.1), 1.0)
    outcome = runner.outcome(runner.wait_any([0])[0])
    assert (outcome.started, outcome.finished, outcome.fit_s) == pytest.approx((0.75, 1.875, 1.0))


def synthetic_samples(n: int = 12) -> list[Sample]:
    return [Sample(point(4 + 3 * i, 0.05 + 0.07 * i), 1.0 + 0.5 * i, loss=7.0 - 0.05 * i) for i in range(n)]


def test_simulated_search_seq_elastic_and_fixed():
    samples = synthetic_samples()
    cost = CostModel.fit(samples, rounds=10, scaling=ThreadScaling(0.1))
    loss = NearestLoss(samples)
    common = {"seed": 3, "max_depth": 40, "overheads": NO_OVERHEAD}
    seq = simulate(cost, loss, SimLayout("seq", 1, 4, 1, 4, elastic=False, seq=True), 12, **common)
    elastic = simulate(cost, loss, SimLayout("4x1", 1, 4, 4, 1), 12, **common)
    fixed = simulate(cost, loss, SimLayout("4x1-fixed", 1, 4, 4, 1, elastic=False), 12, **common)
    # seq: each trial alone on 4 threads, one after another.
    assert seq["wall_s"] == pytest.approx(seq["one_thread_s"] / ThreadScaling(0.1).speedup(4))
    assert elastic["wall_s"] <= fixed["wall_s"]
    assert elastic["core_utilisation"] > fixed["core_utilisation"]
    # every slot busy until the tail: one-thread trials beat one 4-thread trial at a time here
    assert elastic["wall_s"] < seq["wall_s"]
    assert [t["trial_id"] for t in elastic["trials"]] == list(range(12))
    batch = simulate(
        cost, loss, SimLayout("4x1-fixed", 1, 4, 4, 1, elastic=False), 12, mode="batch", **common
    )
    assert batch["wall_s"] >= fixed["wall_s"] - 1e-9  # a batch waits for its slowest trial
    # ... on all the cores, with elastic threads: a batch's early finishers free theirs at once
    batch_elastic = simulate(cost, loss, SimLayout("4x1", 1, 4, 4, 1), 12, mode="batch", **common)
    assert batch_elastic["wall_s"] < batch["wall_s"]


def synthetic_bench(tmp_path):
    samples = synthetic_samples(8)
    runs = []
    for layout, slots, threads in (("seq", 1, 2), ("2x1", 2, 1)):
        t, trials = 0.0, []
        for i, s in enumerate(samples):
            seconds = s.seconds / (1.9 if threads == 2 else 1.0)
            trials.append(
                {
                    "trial_id": i,
                    "params": s.params,
                    "loss": s.loss,
                    "started": t,
                    "finished": t + seconds + 0.1,
                    "fit_s": seconds,
                    "train_s": seconds,
                    "threads_mean": float(threads),
                    "worker": f"w{i % slots}",
                    "error": None,
                }
            )
            t += (seconds + 0.2) / slots
        runs.append(
            {"layout": layout, "repeat": 0, "slots": slots, "cores": 2, "wall_s": t, "trials": trials}
        )
    bench = {
        "machine": {"cores": 2, "cores_usable": 2},
        "settings": {
            "trials": 8,
            "rounds": 10,
            "max_depth": 40,
            "seed": 1,
            "mode": "async",
            "layouts": ["seq", "2x1"],
        },
        "runs": runs,
    }
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(bench))
    return path


def test_plan_fits_the_bench_and_prints_a_table(tmp_path, capsys):
    source = synthetic_bench(tmp_path)
    code = cli.main(
        [
            "plan",
            "--from",
            str(source),
            "--check",
            "--hosts",
            "1,2,4",
            "--layouts",
            "seq,2x1,2x1-fixed",
            "--trials",
            "16",
            "--out",
            str(tmp_path / "plan"),
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    # the same points on 1 and 2 threads, 1.9x apart: Amdahl's serial share 2/1.9 - 1
    assert out["cost_model"]["serial_share"] == pytest.approx(2 / 1.9 - 1, rel=1e-6)
    assert {r["layout"] for r in out["check"]} == {"seq", "2x1"}
    rows = {(r["layout"], r["hosts"]): r for r in out["rows"]}
    assert ("seq", 2) not in rows  # seq is one host by definition
    assert rows[("4x(2x1)", 4)]["slots"] == 8 and rows[("4x(2x1)", 4)]["cores"] == 8
    assert rows[("4x(2x1)", 4)]["wall_s"] < rows[("2x1", 1)]["wall_s"]
    assert out["advice"].startswith("for 16 trials")
    assert (tmp_path / "plan" / "plan.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--from", "missing.json"], "not a readable bench.json"),
        (["--hosts", "0"], "--hosts"),
        (["--speedup", "1:2"], "--speedup"),
        (["--layouts", "2y1"], "not seq or WxT"),
    ],
)
def test_plan_bad_input_is_one_line_and_exit_2(tmp_path, capsys, flags, message):
    source = synthetic_bench(tmp_path)
    args = ["plan", "--from", str(source), *flags] if flags[0] != "--from" else ["plan", *flags]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_overheads_and_samples_from_a_bench(tmp_path):
    bench = json.loads(synthetic_bench(tmp_path).read_text())
    samples = plan.samples_from_bench(bench)
    assert len(samples) == 16 and {s.threads for s in samples} == {1.0, 2.0}
    o = plan.overheads_from_bench(bench)
    assert o.after_s == pytest.approx(0.1)
