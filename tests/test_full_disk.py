"""A disk that fills up mid-study (checkpoints of large models fill disks) stops the study with one `error:` that says
where it stopped, what is kept and the command that continues it, and `--resume` finishes it once there is room. It
once ended with "error: the study failed: TuneError: Traceback …" — a traceback flattened into a 4,000-character
line — pointing at an error.log the full disk had left empty.

The study's storage is a 4 MiB tmpfs mounted in a private mount namespace (`unshare --mount`, root), grown to 300 MiB
before the resume; the whole study takes ~10 MiB."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from study.errors import PLATFORM_ERROR
from subprocs import REPO, SHORT_STUDY, why_no_unshare

STATUSES = """
import json, sys
from mlflow.tracking import MlflowClient
client = MlflowClient(f"sqlite:///{sys.argv[1]}/mlflow.db")
runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
print(json.dumps({"parent": [r.info.status for r in runs if "trial_id" not in r.data.tags],
                  "trials": [r.info.status for r in runs if "trial_id" in r.data.tags]}))
"""


def test_a_full_disk_stops_the_study_for_resume(tmp_path, cifar10_dir, data_cache):
    why = why_no_unshare()
    if why:
        pytest.skip(why)
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir(), out.mkdir()
    storage = disk / "results"
    study = [sys.executable, "-m", "study.run", "--storage", str(storage)]
    q = shlex.join
    script = "\n".join([
        f"mount -t tmpfs -o size=4m tmpfs {q([str(disk)])} || exit 99",
        f"{q(study + ['--data-dir', cifar10_dir, *SHORT_STUDY])} > {out}/full.log 2>&1; echo $? > {out}/full.rc",
        f"mount -o remount,size=300m {q([str(disk)])}",
        f"{q(study + ['--space', 'demo', '--resume'])} > {out}/resumed.log 2>&1; echo $? > {out}/resumed.rc",
        f"{q([sys.executable, '-c', STATUSES, str(storage)])} > {out}/runs.json",  # the tmpfs goes with the namespace
    ])
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", script], cwd=REPO,
                          env={**os.environ, "LAYERWISE_CACHE": data_cache}, timeout=900, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

    full = (out / "full.log").read_text(errors="replace")
    assert int((out / "full.rc").read_text()) == PLATFORM_ERROR, full[-3000:]
    assert re.fullmatch(
        rf"error: No space left on device: the study stopped\. Its finished trials are in MLflow, its state as of its "
        rf"last snapshot in {re.escape(str(storage))}/demo-\S+; free some space \(or raise the quota\), then continue "
        rf"it with: python -m study\.run --space demo --storage {re.escape(str(storage))} --resume",
        full.splitlines()[-1]), full[-3000:]

    resumed = (out / "resumed.log").read_text(errors="replace")
    assert int((out / "resumed.rc").read_text()) == 0, resumed[-3000:]
    assert "progress: 6/6 trials done" in resumed and "report: " in resumed
    runs = json.loads((out / "runs.json").read_text())
    assert runs == {"parent": ["FINISHED"], "trials": ["FINISHED"] * 6}, runs


def test_sqlite_full_behind_mlflow_and_tune_is_a_full_disk(tmp_path):
    """MLflow's SQLite store on a full disk fails with SQLITE_FULL under SQLAlchemy's and MLflow's errors, and Tune
    re-raises a callback's error as a TuneError with the original only as its context."""
    import traceback

    import sqlalchemy
    from mlflow.exceptions import MlflowException
    from ray.tune.error import TuneError

    from study.errors import full_disk

    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with engine.begin() as con:
        con.exec_driver_sql("create table metrics (value blob)")
    with pytest.raises(TuneError) as raised, engine.begin() as con:
        con.exec_driver_sql("PRAGMA max_page_count = 3")  # SQLite's own way to be full with the disk not
        try:
            try:
                con.exec_driver_sql("insert into metrics values (?)", (b"x" * 100_000,))
            except sqlalchemy.exc.OperationalError as err:
                raise MlflowException(str(err)) from err
        except MlflowException:
            raise TuneError(traceback.format_exc())
    found = full_disk(raised.value)
    assert found is not None and str(found) == "database or disk is full"
    assert full_disk(TuneError("a trial's own error")) is None
