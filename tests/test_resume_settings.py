"""``--resume`` keeps how the search was to end (registration thresholds and switches, the
report) unless a flag given with it says otherwise, and says which it used."""

from __future__ import annotations

import pytest

from taxi_hpo import preflight, tracking
from taxi_hpo.cli import build_parser
from taxi_hpo.cli.args import outcome_flags_given, run_config
from taxi_hpo.tracking import SearchRecord

SEARCH = {"train": "2021-01", "valid": "2021-02", "mode": "async", "trials": "6", "seed": "1"}
SEARCH |= {"rounds": "10", "max_depth": "8"}
ENDS = {"max_rmse": "10.0", "max_inference_time": "0.001", "register": "True", "report": "False"}


@pytest.fixture
def record(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = tracking.prepare_store(uri, "resumed", tmp_path / "mlartifacts")

    def make(params: dict) -> tuple[SearchRecord, str]:
        trials = {i: {"params": {}, "loss": 6.6, "run_id": f"r{i}", "metrics": {}} for i in range(3)}
        return SearchRecord("abc123", experiment_id, "KILLED", params, trials, {}, 7.7587), uri

    return make


def resumed(record: SearchRecord, uri: str, *flags: str):
    args = build_parser().parse_args(["run", "--resume", record.run_id, "--tracking-uri", uri, *flags])
    given = outcome_flags_given(args)
    cfg = preflight.resume_config(run_config(args), record, given=given)
    return cfg, preflight.resume_line(cfg, record, given)


def test_the_search_s_own_settings_hold(record):
    cfg, line = resumed(*record({**SEARCH, **ENDS}))
    assert (cfg.max_rmse, cfg.max_inference_time, cfg.register, cfg.report) == (10.0, 0.001, True, False)
    assert line == (
        "taxi-hpo: resuming search abc123 (3 of 6 trials ended): registering below RMSE 10 "
        "(the search's own) and 0.001 s a row (the search's own), report off (the search's own)"
    )


def test_flags_given_with_resume_override_them(record):
    cfg, line = resumed(*record({**SEARCH, **ENDS}), "--max-rmse", "7", "--no-register")
    assert (cfg.max_rmse, cfg.max_inference_time, cfg.register, cfg.report) == (7.0, 0.001, False, False)
    assert "not registering (given now), report off (the search's own)" in line


def test_a_search_that_recorded_none_of_them_gets_the_defaults_and_says_so(record):
    cfg, line = resumed(*record(SEARCH))  # a parent run of taxi-hpo 0.1
    assert (cfg.max_rmse, cfg.max_inference_time, cfg.register, cfg.report) == (6.5, 20e-6, True, True)
    assert "registering below RMSE 6.5 (default: the search did not record it)" in line


def test_a_ladder_search_resumes_with_the_model_tpe_had(record):
    """What TPE was told on a ladder is the search's own: a search that did not record it (before
    the merged model) modelled the lowest rung, and resumes so; a new search merges."""
    assert run_config(build_parser().parse_args(["run", "--fidelity", "auto"])).fidelity_model == "merged"
    ladder = {**SEARCH, "fidelity": "auto"}
    assert resumed(*record(ladder))[0].fidelity_model == "lowest"
    assert resumed(*record({**ladder, "fidelity_model": "merged"}))[0].fidelity_model == "merged"
