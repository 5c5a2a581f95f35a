"""`--resume` checks Tune's saved state before restoring it: a cut-short file comes back from Ray's staging copy,
or the resume is one error naming it (Tune itself would silently start the study over)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

from mlflow.tracking import MlflowClient

from study.record import StudyRecord
from study.run import main
from study.storage import Location
from study.tune_state import STATE_PATTERNS, repair_tune_state, why_unreadable

SESSIONS = ("2026-12-05_13-39-30", "2026-12-05_13-39-42")


def _saved_study(storage: Path, tracking_uri: str) -> StudyRecord:
    """A demo study's record and two sessions' worth of Tune state files (JSON and pickles, as Tune writes them)."""
    record = StudyRecord.new(Location.of(storage), "demo", overrides={}, seed=0, tracking_uri=tracking_uri,
                             experiment="demo")
    study = Path(record.study_dir.uri)
    study.mkdir(parents=True)
    record.save()
    for session in SESSIONS:
        (study / f"experiment_state-{session}.json").write_text(json.dumps({"trial_data": [[session, "x" * 500]]}))
        (study / f"search_gen_state-{session}.json").write_bytes(pickle.dumps({"counter": 3, "session": session}))
        (study / f"searcher-state-{session}.pkl").write_bytes(pickle.dumps({"trials": list(range(100))}))
    return record


def _cut_short(path: Path, keep: int = 40) -> bytes:
    """Cut `path` to its first `keep` bytes, as a kill mid-write leaves it; its whole content."""
    whole = path.read_bytes()
    path.write_bytes(whole[:keep])
    return whole


def test_every_pattern_tune_restores_is_checked_and_whole_files_pass(tmp_path):
    study = Path(_saved_study(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}").study_dir.uri)
    for pattern in STATE_PATTERNS:
        newest = max(study.glob(pattern))
        assert why_unreadable(newest) is None
        _cut_short(newest)
        assert "40 bytes: " in why_unreadable(newest), newest
    empty = study / f"experiment_state-{SESSIONS[0]}.json"
    empty.write_text("")
    assert why_unreadable(empty).startswith("0 bytes: ")


def test_a_cut_short_state_comes_back_from_rays_staging_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "raytmp"))
    record = _saved_study(tmp_path / "results", f"sqlite:///{tmp_path / 'mlflow.db'}")
    study = Path(record.study_dir.uri)
    newest = study / f"experiment_state-{SESSIONS[-1]}.json"
    staging = tmp_path / "raytmp" / "ray" / "session_x" / "artifacts" / "2026-12-05_13-39-30" / record.name / \
        "driver_artifacts"
    staging.mkdir(parents=True)
    (staging / newest.name).write_bytes(newest.read_bytes())
    whole = _cut_short(newest)
    (done,) = repair_tune_state(study)
    assert newest.read_bytes() == whole and str(staging / newest.name) in done and "cut short (40 bytes" in done
    assert repair_tune_state(study) == [] and not list(study.glob(".*recovered"))


def test_without_a_staging_copy_the_resume_is_one_error_naming_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "raytmp"))  # no Ray session has ever run here
    storage = tmp_path / "results"
    study = Path(_saved_study(storage, f"sqlite:///{tmp_path / 'mlflow.db'}").study_dir.uri)
    newest = study / f"searcher-state-{SESSIONS[-1]}.pkl"
    whole = _cut_short(newest)
    MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_experiments()  # the store, as the study left it
    capsys.readouterr()
    before = sorted(p.name for p in study.iterdir())
    assert main(["--space", "demo", "--storage", str(storage), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --resume: Tune's saved state {newest} is cut short (40 bytes: ") and \
        err.count("\n") == 1, err
    assert f"move that session's files (*-{SESSIONS[1]}.*) aside to resume from the session before ({SESSIONS[0]}; " \
        in err
    assert sorted(p.name for p in study.iterdir()) == before and newest.read_bytes() == whole[:40]
