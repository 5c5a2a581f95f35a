"""The study's typed record, the settings carried in each Tune config, and runs that Tune forgot."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from mlflow.tracking import MlflowClient
from ray.tune.search.optuna import OptunaSearch

from study.plan import SETTINGS_KEY, from_tune, make_plan
from s3server import moto_server
from study.errors import InputError
from study.record import CLAIM_FILE, STUDY_FILE, StudyRecord, release_held
from study.storage import Location
from study.tracking import LOST_TRIAL, StudyRecorder
from trainables.records import ERROR_TAG, PARENT_TAG, STATUS_TAG


def test_record_round_trips_and_the_latest_study_is_found(tmp_path):
    storage = Location.of(tmp_path)
    older = StudyRecord(space="demo", overrides={"epochs": 3}, seed=1, tracking_uri="sqlite:///x.db",
                        experiment="demo", study_dir=storage / "demo-20260101-000000", parent_run_id="abc")
    newer = StudyRecord.new(storage, "demo", overrides={"epochs": 2, "limit": 600}, seed=7,
                            tracking_uri="sqlite:///y.db", experiment="mine")
    older.save()
    newer.save()
    assert (tmp_path / newer.name / STUDY_FILE).is_file() and newer.study_dir.name.startswith("demo-2")
    assert StudyRecord.load(older.study_dir) == older
    assert StudyRecord.latest(storage, "demo") == newer
    assert StudyRecord.latest(storage, "tvlars_bs16k") is None
    assert newer.train_dir == newer.study_dir / "train" and newer.artifact_root == storage / "mlartifacts"


def test_each_tune_config_carries_the_trials_complete_settings(tmp_path):
    plan = make_plan("demo", {"epochs": 2, "limit": 600}, seed=3, data_dir=str(tmp_path))
    search = OptunaSearch(space=plan.define_by_run, metric="val_top1", mode="max",
                          sampler=optuna.samplers.TPESampler(seed=0))
    configs = [search.suggest(f"t{i}") for i in range(6)]
    variants = {c["variant"] for c in configs}
    assert len(variants) > 1, variants
    for config in configs:
        cfg = from_tune(config)
        drawn = config[config["variant"]]
        assert cfg == plan.trial_config({"variant": config["variant"], config["variant"]: drawn})
        assert (cfg.epochs, cfg.limit, cfg.seed) == (2, 600, 3)
        assert {k: cfg.to_dict()[k] for k in drawn} == drawn
        assert config[SETTINGS_KEY] == cfg.to_dict()  # plain values in the Tune config


def test_runs_of_trials_that_tune_forgot_are_closed_at_the_end(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("demo", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(exp).info.run_id

    def trial_run(trial_id: str, epochs: int) -> str:
        run_id = client.create_run(exp, tags={PARENT_TAG: parent, "trial_id": trial_id, STATUS_TAG: "running"}
                                   ).info.run_id
        for epoch in range(1, epochs + 1):
            client.log_metric(run_id, "epoch", epoch, step=epoch)
        return run_id

    kept, never_trained, trained = trial_run("kept", 1), trial_run("gone0", 0), trial_run("gone1", 2)
    recorder = StudyRecorder(uri, exp, parent, max_epoch=3, train_storage=str(tmp_path / "train"))
    recorder.on_experiment_end(trials=[SimpleNamespace(trial_id="kept")])

    active = {r.info.run_id for r in client.search_runs([exp], f"tags.`{PARENT_TAG}` = '{parent}'")}
    assert active == {kept, trained}
    assert client.get_run(never_trained).info.lifecycle_stage == "deleted"
    lost = client.get_run(trained)
    assert (lost.info.status, lost.data.tags[STATUS_TAG], lost.data.tags[ERROR_TAG]) == ("FAILED", "errored",
                                                                                       LOST_TRIAL)
    assert client.get_run(kept).data.tags[STATUS_TAG] == "running"


def _record(study_dir: Location) -> StudyRecord:
    return StudyRecord(space="demo", overrides={}, seed=0, tracking_uri="sqlite:///x.db", experiment="demo",
                       study_dir=study_dir)


def test_studies_started_in_the_same_second_get_folders_of_their_own(tmp_path, monkeypatch):
    """Two studies of one space started in one second under one storage once shared a folder (and Tune state)."""
    storage = Location.of(tmp_path)
    same = [_record(storage / "demo-20261207-120000") for _ in range(3)]
    for record in same:
        record.claim()
    assert [r.name for r in same] == ["demo-20261207-120000", "demo-20261207-120000-2", "demo-20261207-120000-3"]
    assert all((tmp_path / r.name).is_dir() for r in same)
    for record in same:
        record.save()
    assert StudyRecord.latest(storage, "demo").name == "demo-20261207-120000-3"

    with moto_server(tmp_path, ("bucket",)) as env:  # in object storage the first claim file written there
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        remote = [_record(Location.of("s3://bucket/studies") / "demo-20261207-120000") for _ in range(2)]
        for record in remote:
            record.claim()
        assert [r.name for r in remote] == ["demo-20261207-120000", "demo-20261207-120000-2"]
        assert all((r.study_dir / CLAIM_FILE).is_file() for r in remote)
        assert StudyRecord.latest(Location.of("s3://bucket/studies"), "demo") is None  # claimed is not saved


def test_a_running_study_is_locked_against_another_process(tmp_path):
    """`--resume` of a study still running in another process once ran it twice at once."""
    record = _record(Location.of(tmp_path) / "demo-20261207-120000")
    record.claim()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from study.record import StudyRecord; from study.storage import Location; "
        f"r = StudyRecord.load(Location.of({str(record.study_dir)!r})); r.hold(); print('held', flush=True); "
        "time.sleep(60)")], cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, text=True)
    try:
        record.save()
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(InputError, match=rf"^study demo-20261207-120000 is running \(pid {holder.pid} on "
                                             rf"{socket.gethostname()}, since .*\); wait for it to end, or stop it"):
            record.hold()
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    record.hold()  # the system freed the killed process's lock
    record.hold()  # and this process may take its own again
    release_held()
