"""A new SQLite MLflow store starts as a copy of the empty store kept in the project's cache (`EmptyStore`):
the same schema, MLflow's own Default experiment for this store, and a damaged copy never used."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import mlflow

from study.mlflow_store import EmptyStore, check_tracking_uri


def tables(database: Path) -> set[str]:
    with sqlite3.connect(database) as db:
        return {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def revision(database: Path) -> list[tuple[str]]:
    with sqlite3.connect(database) as db:
        return db.execute("SELECT version_num FROM alembic_version").fetchall()


def new_store(folder: Path, monkeypatch) -> tuple[Path, mlflow.MlflowClient]:
    """A new store in `folder`, opened from there (MLflow's Default experiment lives under the working folder)."""
    folder.mkdir(parents=True)
    monkeypatch.chdir(folder)
    database = folder / "mlflow.db"
    return database, check_tracking_uri(f"sqlite:///{database}")


def test_a_new_store_is_a_copy_of_the_kept_empty_store(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERWISE_CACHE", str(tmp_path / "cache"))
    kept = EmptyStore.current().path
    first, client = new_store(tmp_path / "a", monkeypatch)
    assert kept == tmp_path / "cache" / f"mlflow-{mlflow.__version__}-empty.db" and kept.is_file()
    with sqlite3.connect(kept) as db:
        assert db.execute("SELECT COUNT(*) FROM experiments").fetchone() == (0,)  # kept without Default
    assert revision(kept) == revision(first) and len(revision(first)) == 1
    with sqlite3.connect(kept) as db:  # a mark only a copy of the kept file can carry
        db.execute("CREATE TABLE copied_from_the_kept_store (x INTEGER)")

    second, copied = new_store(tmp_path / "b", monkeypatch)
    assert "copied_from_the_kept_store" in tables(second)
    assert tables(second) - {"copied_from_the_kept_store"} == tables(first)
    default = copied.get_experiment("0")  # added by MLflow on opening, for this store
    assert default.name == "Default" and Path(default.artifact_location) == tmp_path / "b" / "mlruns" / "0"
    assert default.creation_time >= client.get_experiment("0").creation_time
    assert client.create_experiment("x") == copied.create_experiment("x") == "1"


def test_a_damaged_kept_store_is_never_copied_and_is_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERWISE_CACHE", str(tmp_path / "cache"))
    kept = EmptyStore.current().path
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"SQLite format 3\x00" + b"\x07" * 4000)  # a header and nothing a database holds

    database, client = new_store(tmp_path / "a", monkeypatch)
    assert [e.name for e in client.search_experiments()] == ["Default"]
    assert len(revision(kept)) == 1 and revision(kept) == revision(database)
