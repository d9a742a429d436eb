"""A new local sqlite store starts as a copy of an empty migrated one (tracking.store)."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from taxi_hpo.tracking import store
from taxi_hpo.tracking._mlflow import MlflowClient, mlflow


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("TAXI_HPO_CACHE_DIR", str(folder))
    monkeypatch.chdir(tmp_path)  # a Default experiment is rooted at ./mlruns, as MLflow does
    return folder


def _tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {name for (name,) in conn.execute("select name from sqlite_master where type = 'table'")}


def test_a_new_store_is_seeded_and_works_like_one_mlflow_made(tmp_path, cache):
    db = tmp_path / "runs" / "mlflow.db"
    db.parent.mkdir()
    uri = f"sqlite:///{db}"
    experiment_id = store.prepare_store(uri, "seeded", tmp_path / "mlartifacts")

    template = cache / f"mlflow-{mlflow.__version__}-empty.db"
    assert template.is_file(), "the empty migrated store is kept for the next new store"
    assert _tables(db) == _tables(template) and "alembic_version" in _tables(db)
    assert not list(db.parent.glob(".*seed*")), "no temporary copy is left beside the store"

    client = MlflowClient(tracking_uri=uri)
    default = client.get_experiment("0")  # MLflow made it again in the copy, as in a store of its own
    plain = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'plain.db'}").get_experiment("0")
    assert (default.name, default.artifact_location) == (plain.name, plain.artifact_location)
    run = client.create_run(experiment_id)
    client.log_metric(run.info.run_id, "rmse_valid", 5.2)
    client.set_terminated(run.info.run_id)
    assert client.get_run(run.info.run_id).data.metrics == {"rmse_valid": 5.2}
    assert (
        client.get_experiment(experiment_id).artifact_location
        == (tmp_path / "mlartifacts" / "seeded").as_uri()
    )

    # the template is made once: a second new store is a copy of the same file
    stamp = template.stat().st_mtime_ns
    other = tmp_path / "other.db"
    assert store.seed_sqlite_store(f"sqlite:///{other}")
    assert template.stat().st_mtime_ns == stamp and _tables(other) == _tables(template)


def test_an_existing_store_is_never_replaced(tmp_path, cache):
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    experiment_id = store.prepare_store(uri, "kept", tmp_path / "mlartifacts")
    run_id = MlflowClient(tracking_uri=uri).create_run(experiment_id).info.run_id
    assert not store.seed_sqlite_store(uri)
    assert store.prepare_store(uri, "kept", tmp_path / "mlartifacts") == experiment_id
    assert MlflowClient(tracking_uri=uri).get_run(run_id).info.experiment_id == experiment_id
    assert not store.seed_sqlite_store("http://127.0.0.1:5000")  # only local sqlite files


def _prepare(uri: str, artifacts: str, queue) -> None:
    try:
        queue.put(store.prepare_store(uri, "shared", Path(artifacts)))
    except Exception as exc:  # noqa: BLE001 - the parent asserts on what came back
        queue.put(f"{type(exc).__name__}: {exc}")


def test_searches_started_at_once_on_a_new_folder_share_one_store(tmp_path, cache):
    """Four processes create the same new store at once (the template made by the first):
    each gets the one experiment, none sees a half-migrated schema."""
    db = tmp_path / "mlflow.db"
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    makers = [
        context.Process(target=_prepare, args=(f"sqlite:///{db}", str(tmp_path / "mlartifacts"), queue))
        for _ in range(4)
    ]
    for maker in makers:
        maker.start()
    answers = [queue.get(timeout=120) for _ in makers]
    for maker in makers:
        maker.join(timeout=30)
    assert len(set(answers)) == 1 and answers[0].isdigit(), answers
    assert [e.name for e in MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()].count(
        "shared"
    ) == 1


def test_a_half_migrated_store_is_one_line_saying_what_to_do(tmp_path, cache, data_dir, capsys):
    """An upgrade interrupted mid-way (two MLflow processes upgrading one store at once, seen in
    issue 20) leaves alembic's table copy behind, and every later open fails with a migration
    traceback: the run says what happened and what to do instead, and starts nothing."""
    from taxi_hpo import cli
    from taxi_hpo.errors import TrackingError

    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    store.prepare_store(uri, "shared", tmp_path / "mlartifacts")
    with sqlite3.connect(db) as conn:
        conn.execute("create table _alembic_tmp_latest_metrics (key varchar(250))")
    with pytest.raises(TrackingError, match=r"half-migrated .*_alembic_tmp_latest_metrics.*\(mv "):
        store.prepare_store(uri, "shared", tmp_path / "mlartifacts")
    code = cli.main(["run", "--data-dir", str(data_dir), "--tracking-uri", uri, "--trials", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "half-migrated" in err[0] and "Traceback" not in err[0]


def test_a_store_another_process_is_creating_is_waited_for_then_said_busy(tmp_path, cache):
    """One process at a time opens (and so upgrades) a sqlite store: while another holds its
    lock a search waits, and after the timeout says the store is busy and who holds it."""
    from filelock import FileLock

    from taxi_hpo.errors import TrackingError

    db = tmp_path / "mlflow.db"
    lock = store.lock_path(f"sqlite:///{db}")
    lock.parent.mkdir(parents=True, exist_ok=True)
    holder = FileLock(str(lock))
    with holder:
        busy = pytest.raises(TrackingError, match=rf"is busy: .*{lock.name}")
        with busy, store.store_lock(f"sqlite:///{db}", timeout_s=0.2):
            pass
        assert not db.exists()  # nothing was made while it waited
    assert store.prepare_store(f"sqlite:///{db}", "shared", tmp_path / "mlartifacts").isdigit()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("mlflow")) == ["mlflow.db"]
