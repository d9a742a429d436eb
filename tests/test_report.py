"""The search report: pure pieces on synthetic runs, then on a real search's MLflow store."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from taxi_hpo import cli, report
from taxi_hpo.report import SearchReport, TrialRow

PARAMS = {
    "max_depth": 7,
    "learning_rate": 0.3,
    "reg_alpha": 0.02,
    "reg_lambda": 0.01,
    "min_child_weight": 1.5,
}


def row(trial_id, state, started, finished, worker="w1", rmse=6.5, **kw):
    return TrialRow(
        trial_id, state, started, finished, worker, rmse, dict(PARAMS), run_id=f"r{trial_id}-{started}", **kw
    )


def synthetic() -> SearchReport:
    rows = [
        row(0, "complete", 100, 110, rmse=6.6),
        row(1, "complete", 100, 104, "w2", rmse=6.4),
        row(2, "pruned", 104, 105, "w2", rmse=9.0, pruned_at=3),
        row(3, "failed", 105, 106, "w2", rmse=None, error="boom"),  # first attempt of trial 3 ...
        row(3, "complete", 110, 118, "w1", rmse=6.5),  # ... its retry finished
        row(4, "stopped", 106, 119, "w2", rmse=None),
    ]
    return SearchReport(
        "abcdef0123456789",
        "nyc-taxi-hpo",
        "FINISHED",
        99,
        120,
        {"trials": "6", "mode": "async", "prune": "asha", "rounds": "10", "seed": "1"},
        {"lr_rmse": 7.7587, "utilisation": 0.9},
        rows,
    )


def test_summary_counts_each_trial_once_by_its_last_word():
    s = synthetic().summary()
    assert (
        s["trials_run"],
        s["trials_complete"],
        s["trials_pruned"],
        s["trials_failed"],
        s["trials_stopped"],
    ) == (5, 3, 1, 0, 1)
    assert s["attempts"] == 6 and s["trials_planned"] == 6 and s["workers"] == 2
    assert (s["best_rmse"], s["best_trial"]) == (6.4, 1)  # the pruned trial's 9.0 is never a candidate
    assert s["search_wall_s"] == 19.0


def test_a_trial_the_search_saw_end_is_not_shown_running():
    """A tracking server under load may still read a just-ended run as RUNNING (seen once in the
    browser test): the search's own outcome wins for it, and only for it."""
    rep = synthetic()
    rep.rows.append(row(5, "running", 112, None, rmse=None))
    rep.rows.append(row(6, "running", 113, None, rmse=None))
    report.apply_ended(rep, {"r5-112": report.ended_as(6.3, None, False, 121.0)})
    s = rep.summary()
    assert (s["best_trial"], s["best_rmse"], s["trials_complete"]) == (5, 6.3, 4)
    assert [r.state for r in rep.rows if r.trial_id == 6] == ["running"]


def test_lanes_separate_trials_that_overlap_on_one_worker():
    rows = [
        row(0, "complete", 0, 10),
        row(1, "complete", 2, 5),
        row(2, "complete", 5, 8),
        row(3, "complete", 10, 12),
    ]
    placed = {r.trial_id: lane for _, lane, r in report.lanes(rows, now=20)}
    assert placed == {0: 0, 1: 1, 2: 1, 3: 0}


def test_rmse_axis_keeps_the_complete_trials_in_view():
    low, high = report._rmse_limits(synthetic())
    assert low < 6.4 and 7.7587 <= high < 9.0  # the baseline shown, the pruned 9.0 drawn at the edge


def _ladder_search() -> SearchReport:
    """A --fidelity search: 12 points screened at rung 0, 6 of them fitted again completely;
    the complete RMSE follows the learning rate (log) and hardly the depth."""
    import math

    rows, t = [], 100.0
    for i in range(12):
        point = {**PARAMS, "learning_rate": 0.05 * 1.3**i, "max_depth": 4 + (i * 7) % 11}
        rmse = 6.3 + 0.2 * abs(math.log(point["learning_rate"] / 0.3)) + 0.001 * point["max_depth"]
        low = {
            "rung": 0,
            "of": 2,
            "rows": 1 / 9,
            "rounds": 9,
            "config": i,
            "promoted_from": None,
            "complete": False,
        }
        rows.append(TrialRow(i, "screened", t, t + 1, "w1", rmse + 0.5, point, run_id=f"s{i}", fidelity=low))
        if i % 2 == 0:
            up = {**low, "rung": 1, "rows": 1.0, "rounds": None, "promoted_from": i, "complete": True}
            trial = 100 + i
            rows.append(
                TrialRow(trial, "complete", t + 1, t + 5, "w2", rmse, point, run_id=f"c{i}", fidelity=up)
            )
        t += 1
    params = {
        "trials": "18",
        "mode": "batch",
        "prune": "none",
        "fidelity": "auto",
        "rounds": "30",
        "seed": "1",
    }
    return SearchReport(
        "fedcba9876543210", "nyc-taxi-hpo", "FINISHED", 99, 200, params, {"lr_rmse": 7.76}, rows
    )


def test_a_ladder_search_reports_its_rungs_and_which_hyperparameters_mattered(tmp_path):
    rep = _ladder_search()
    s = rep.summary()
    assert (s["trials_run"], s["trials_complete"], s["trials_screened"]) == (18, 6, 12)
    assert s["best_trial"] in (100, 102, 104, 106, 108, 110) and s["best_rmse"] == min(
        r.rmse for r in rep.complete
    )
    assert s["ladder"] == [
        {"rung": 0, "rows": 1 / 9, "rounds": 9, "fits": 12, "promoted": 0},
        {"rung": 1, "rows": 1.0, "rounds": None, "fits": 6, "promoted": 6},
    ]
    # fANOVA on the complete trials: the learning rate explains the RMSE, the shares sum to one
    shares = s["importance"]
    assert next(iter(shares)) == "learning_rate" and shares["learning_rate"] > 0.5
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-3)
    assert report.hyperparameter_importance(rep) == shares  # a fixed seed: the same shares again
    # a screened trial's end, as the search saw it, is not a complete one
    assert report.ended_as(6.9, None, False, 1.0, complete_fit=False)["state"] == "screened"
    report.write(rep, tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert "The ladder" in page and "12 screened" in page and "Which hyperparameters mattered" in page
    assert re.search(r"learning_rate</td><td class='num'>\d+\.\d%", page)
    # below five complete trials fANOVA says nothing, and the page says why
    few = _ladder_search()
    few.rows = [r for r in few.rows if r.state == "screened" or r.trial_id < 104]
    assert few.summary()["importance"] is None and "fANOVA needs 5" in report.render_html(few, {})
    assert synthetic().summary()["ladder"] is None
    flat = _ladder_search()  # every complete trial the same RMSE: nothing to attribute
    for r in flat.rows:
        r.rmse = 6.5
    assert report.hyperparameter_importance(flat) is None


def test_files_and_a_self_contained_page(tmp_path):
    files = report.write(synthetic(), tmp_path)
    assert [f.name for f in files] == [
        "best_so_far.png",
        "params.png",
        "timeline.png",
        "summary.json",
        "report.html",
    ]
    assert all(f.stat().st_size > 1000 for f in files if f.suffix == ".png")
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    assert not re.search(r"(src|href)=['\"]?(https?:|//)", page)  # nothing fetched from elsewhere
    assert "6.4000 (trial 1)" in page and "1 pruned" in page
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["best_trial"] == 1 and len(saved["trials"]) == 5


@pytest.mark.integration
def test_a_search_reports_on_its_parent_run_and_report_redoes_it(prefect_api_url, data_dir, workdir, capsys):
    assert (
        cli.main(
            [
                "run",
                "--data-dir",
                str(data_dir),
                "--trials",
                "5",
                "--rounds",
                "6",
                "--max-depth",
                "6",
                "--prune",
                "asha",
                "--max-rmse",
                "100",
                "--max-inference-time",
                "1",
                "--json",
            ]
        )
        == 0
    )
    s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert s["report"] == "report/report.html" and s["registered_version"] is not None
    # drawn in a thread of its own, started before the best model registered in the flow's
    steps = s["timeline"]
    assert steps["report_started"] < steps["registered"] < steps["report_done"], steps
    client = MlflowClient(s["tracking_uri"])
    logged = {a.path for a in client.list_artifacts(s["parent_run_id"], "report")}
    assert logged == {f"report/{name}" for name in (*report.PICTURES, "summary.json", "report.html")}
    local = client.download_artifacts(s["parent_run_id"], "report/summary.json", str(workdir))
    saved = json.loads(Path(local).read_text())
    assert saved["best_rmse"] == pytest.approx(s["best_rmse"]) and saved["status"] == "FINISHED"
    assert saved["trials_pruned"] == s["trials_pruned"] and saved["trials_run"] == 5
    assert saved["lr_rmse"] == pytest.approx(s["lr_rmse"], abs=1e-4)

    # for an earlier search, into a folder too; `latest` is the same search here
    out = workdir / "rep"
    assert cli.main(["report", "latest", "--out", str(out)]) == 0
    assert s["parent_run_id"] in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["best_trial"] == saved["best_trial"]
    assert f"{s['best_rmse']:.4f}" in (out / "report.html").read_text()


@pytest.fixture(scope="module")
def store_without_searches(tmp_path_factory):
    """A real sqlite store with the experiment and no run, made once (MLflow's schema migration
    takes seconds) and copied into each test's folder."""
    from taxi_hpo import tracking

    folder = tmp_path_factory.mktemp("store")
    tracking.prepare_store(f"sqlite:///{folder / 'mlflow.db'}", "nyc-taxi-hpo", folder / "mlartifacts")
    return folder / "mlflow.db"


@pytest.mark.parametrize(
    "args, said",
    [
        (["nope"], "no search run nope"),
        (["x", "--tracking-uri", "sqlite:////nonexistent/m.db"], "no tracking store"),
    ],
)
def test_report_of_no_search_is_one_line(args, said, workdir, store_without_searches, capsys):
    import shutil

    shutil.copyfile(store_without_searches, workdir / "mlflow.db")  # a store, without that run
    assert cli.main(["report", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert said in err and "\n" not in err and err.startswith("taxi-hpo: error:")
