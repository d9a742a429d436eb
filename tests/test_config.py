"""Run settings: the default layout fills the cores this process may use, and no more."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys

import pytest

from taxi_hpo.config import RunConfig
from taxi_hpo.core.machine import usable_cores
from taxi_hpo.errors import ConfigError

AFFINITY = len(os.sched_getaffinity(0))


def test_default_workers_fill_the_usable_cores():
    assert 1 <= usable_cores() <= AFFINITY  # fewer under a cgroup CPU quota
    assert RunConfig().workers == usable_cores()
    assert RunConfig(threads_per_worker=2).workers == max(1, usable_cores() // 2)
    assert RunConfig(threads_per_worker=64).workers == 1
    assert RunConfig(workers=5, threads_per_worker=2).workers == 5  # an explicit count is kept
    with pytest.raises(ConfigError, match="--workers must be a positive whole number"):
        RunConfig(workers=0)


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux)")
def test_default_workers_follow_the_affinity_mask():
    probe = (
        "from taxi_hpo.config import RunConfig; "
        "print(RunConfig().workers, RunConfig(threads_per_worker=2).workers)"
    )
    out = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["1", "1"]


@pytest.mark.parametrize(
    "cpu_max, cap",
    [("max 100000\n", None), ("150000 100000\n", 2), ("50000 100000\n", 1), ("garbage\n", None)],
)
def test_a_cgroup_cpu_quota_caps_the_cores(tmp_path, cpu_max, cap):
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    assert usable_cores(path) == (AFFINITY if cap is None else min(AFFINITY, cap))
    assert usable_cores(tmp_path / "missing") == AFFINITY


def test_the_layout_line_says_why_when_the_layout_was_chosen_for_you():
    from taxi_hpo.flows.reporting import layout_line
    from taxi_hpo.search.threads import ThreadPlan

    plan = ThreadPlan({"w1": ("p", 1), "w2": ("p", 1)}, {"p": 2})
    chosen = RunConfig(threads_per_worker=1)
    assert chosen.default_layout and not RunConfig(workers=2).default_layout
    line = layout_line(dataclasses.replace(chosen, workers=2), 2, 2, plan)
    assert line.startswith(
        "2 workers x 1 XGBoost thread, 2 trials at a time (local cluster); elastic threads"
    )
    assert "(the default for 2 usable cores: a trial per core, no thread waiting on another" in line
    asked = layout_line(RunConfig(workers=2), 2, 2, plan)
    assert "the default" not in asked and "elastic threads" in asked
    fixed = ThreadPlan({"w1": ("p", 1), "w2": ("p", 1)}, {"p": 2}, elastic=False)
    assert "elastic" not in layout_line(RunConfig(workers=2, elastic_threads=False), 2, 2, fixed)


def test_durations_and_budget_flags():
    from taxi_hpo.config import parse_duration

    assert [parse_duration(t) for t in ("90", "90s", "30m", "1.5h", "2H")] == [90, 90, 1800, 5400, 7200]
    for bad in ("", "soon", "-5m", "0", "nanm"):
        with pytest.raises(ConfigError):
            parse_duration(bad)
    assert RunConfig(timeout_s=60, timeout_kill=True).timeout_kill
    with pytest.raises(ConfigError, match="--timeout-kill needs --timeout"):
        RunConfig(timeout_kill=True)
    with pytest.raises(ConfigError, match="--prune must be one of"):
        RunConfig(prune="hyperband")


@pytest.mark.parametrize(
    "settings, local",
    [
        ({}, True),  # the LocalCluster this process starts
        ({"address": "tcp://10.0.0.2:8786"}, False),
        ({"cluster_class": "distributed.LocalCluster"}, True),
        ({"cluster_class": "distributed.LocalCluster", "cluster_kwargs": {"processes": False}}, False),
        ({"cluster_class": "distributed.deploy.spec.SpecCluster"}, True),
        ({"cluster_class": "dask_jobqueue.SLURMCluster"}, False),  # its workers start elsewhere
        ({"cluster_class": "mypackage.LocalCluster"}, False),
    ],
)
def test_worker_processes_on_this_host_are_those_of_dasks_own_managers(settings, local):
    """Where the command forks its workers from its fork server (cluster.forkserver)."""
    assert RunConfig(**settings).local_worker_processes is local


def test_the_tracking_patience_is_31_5_s_over_8_attempts_unless_the_environment_says(monkeypatch, capsys):
    from taxi_hpo import cli
    from taxi_hpo.tracking.store import PATIENCE_S, backoff, patience_s

    monkeypatch.delenv("TAXI_HPO_TRACKING_PATIENCE_S", raising=False)
    assert patience_s() == PATIENCE_S == 31.5
    assert backoff(patience_s()) == [0.5, 1, 2, 4, 8, 8, 8]  # README: "about 30 s in all"
    monkeypatch.setenv("TAXI_HPO_TRACKING_PATIENCE_S", "120")
    assert sum(backoff(patience_s())) == 120 and max(backoff(patience_s())) == 8
    monkeypatch.setenv("TAXI_HPO_TRACKING_PATIENCE_S", "0")
    assert backoff(patience_s()) == []  # one attempt, no wait
    for bad in ("soon", "-1", "inf"):
        monkeypatch.setenv("TAXI_HPO_TRACKING_PATIENCE_S", bad)
        assert cli.main(["run", "--trials", "1"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(
            f"taxi-hpo: error: TAXI_HPO_TRACKING_PATIENCE_S='{bad}'"
        )


def test_the_synopsis_defaults_are_what_a_bare_run_gets(monkeypatch, tmp_path):
    """README's synopsis says each default as ``[--flag VALUE]``: a ``taxi-hpo run`` given no
    flags gets exactly those (the reference's 100 rounds, depth 4-100, seed 42, ...)."""
    from pathlib import Path

    from taxi_hpo.cli import build_parser
    from taxi_hpo.cli.args import run_config

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    synopsis = readme[readme.index("taxi-hpo run [") : readme.index("taxi-hpo bench [")]
    monkeypatch.delenv("TAXI_HPO_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = run_config(build_parser().parse_args(["run"]))
    stated = {
        "--train 2021-01": cfg.train == "2021-01",
        "--valid 2021-02": cfg.valid == "2021-02",
        "--data-dir ./data": Path(cfg.data_dir).resolve() == tmp_path / "data",
        "--trials 20": cfg.trials == 20,
        "--threads-per-worker T=1": cfg.threads_per_worker == 1 and cfg.elastic_threads,
        "--seed 42": cfg.seed == 42,
        "--rounds 100": cfg.rounds == 100,
        "--max-depth 100": cfg.max_depth == 100,
        "--experiment nyc-taxi-hpo": cfg.experiment == "nyc-taxi-hpo",
        "--max-rmse 6.5": cfg.max_rmse == 6.5,
        "--max-inference-time 20e-6": cfg.max_inference_time == 20e-6,
        "--warm-start-trials 5": cfg.warm_start_trials == 5,
        "--mode async|batch": cfg.mode == "async",  # the first one named is the default
        "--prune none|median|asha": cfg.prune == "none",
        "--fidelity none|auto|rows|rounds": cfg.fidelity == "none",
    }
    assert [flag for flag in stated if flag not in synopsis] == []  # as README writes them
    assert [flag for flag, holds in stated.items() if not holds] == []
    assert (cfg.register, cfg.report, cfg.resume, cfg.warm_start, cfg.timeout_s) == (
        True,
        True,
        None,
        None,
        None,
    )
