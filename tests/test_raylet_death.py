"""The local Ray's raylet killed mid-study (what the kernel's OOM killer may pick): Ray's core worker ends the driver
once its object store is gone (exit 1), nothing of the study's is left running, and `--resume` finishes the study
with its report. A trial the raylet's death failed before its first report has no config in Tune's results; the
report once crashed on it ("'NoneType' object has no attribute 'get'"), after the resumed study's last trial.
`--resume --resume-errored` then restarts those trials (Tune's `resume_errored`), their MLflow runs reopened."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from subprocs import (REPO, SHORT_STUDY, as_from_a_terminal, assert_succeeds, describe, in_session, left_in_session,
                      start_logged, wait_for_text)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_a_study_whose_raylet_died_resumes_to_its_report(tmp_path, cifar10_dir, data_cache):
    storage = tmp_path / "results"
    env = {**os.environ, "LAYERWISE_CACHE": data_cache}
    cmd = [sys.executable, "-m", "study.run", "--storage", str(storage), "--data-dir", cifar10_dir, *SHORT_STUDY]
    log = tmp_path / "study.log"
    proc = start_logged(cmd, log, cwd=REPO, env=env, start_new_session=True, preexec_fn=as_from_a_terminal)
    wait_for_text(" terminated after ", proc, cmd, log, "ended a trial", 300)  # the next ones are starting
    raylets = [pid for pid, name in in_session(proc.pid).items() if name == "raylet"]
    assert len(raylets) == 1, in_session(proc.pid)
    os.kill(raylets[0], signal.SIGKILL)
    proc.wait(timeout=120)
    assert proc.returncode != 0, describe(cmd, log, "finished without its raylet")
    assert not (left := left_in_session(proc.pid)), left  # the daemons and trial workers go with the driver

    resume = [sys.executable, "-m", "study.run", "--space", "demo", "--storage", str(storage), "--resume"]
    resumed = assert_succeeds(resume, tmp_path / "resumed.log", cwd=REPO, env=env, timeout=600).output
    assert "progress: 6/6 trials done" in resumed and "search: 6 trials (" in resumed and "report: " in resumed
    (parent,), trials = _runs(storage)
    assert parent.info.status == "FINISHED"
    assert all(r.info.status != "RUNNING" for r in trials), [(r.info.run_name, r.info.status) for r in trials]

    # the trials the raylet took down (one or two here), restarted: their runs reopened, then finished
    errored = {r.info.run_id for r in trials if r.data.tags["status"] == "errored"}
    again = assert_succeeds([*resume, "--resume-errored"], tmp_path / "again.log", cwd=REPO, env=env,
                            timeout=600).output
    assert "search: 6 trials (0 errored)" in again and "report: " in again, again[-3000:]
    (parent,), trials = _runs(storage)
    assert parent.info.status == "FINISHED" and len(trials) == 6
    assert all(r.info.status == "FINISHED" and "error" not in r.data.tags for r in trials if r.info.run_id in errored)
    assert all(r.data.tags["status"] in ("completed", "stopped_by_asha") for r in trials), \
        [(r.info.run_name, r.data.tags["status"]) for r in trials]


def _runs(storage: Path) -> tuple[list, list]:
    """The study's parent run(s) and trial runs."""
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    return [r for r in runs if "trial_id" not in r.data.tags], [r for r in runs if "trial_id" in r.data.tags]
