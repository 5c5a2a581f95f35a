"""End to end: `python -m study.run` as users run it — killed mid-study and resumed (one-worker trials,
trained in their Tune actors), and submitted as a Ray job (two-worker trials, run as Ray Train jobs).

Both run a shrunken `demo` with a real local Ray and a real MLflow sqlite store in a temp folder, then
read the store back.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from subprocs import assert_succeeds, describe, run_logged, start_logged

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--num-samples", "4", "--set", "epochs=3", "--set", "limit=1200", "--set", "test_limit=400",
         "--set", "batch_size=300", "--set", "grace_period=1", "--set", "reduction_factor=2"]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
JOB_AGENT_WAIT_S = 120


def _env(data_cache: str) -> dict[str, str]:
    return {**os.environ, "LAYERWISE_CACHE": data_cache}


def _query(db: Path, sql: str) -> list[tuple]:
    if not db.is_file():
        return []
    try:
        with sqlite3.connect(db) as con:
            return con.execute(sql).fetchall()
    except sqlite3.Error:
        return []


def _trial_runs(uri: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("demo")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "trial_id" not in r.data.tags]
    return client, parents, [r for r in runs if "trial_id" in r.data.tags]


def _epochs(client, run) -> list[int]:
    return sorted(int(m.step) for m in client.get_metric_history(run.info.run_id, "epoch"))


def _checkpointed_epoch(storage: Path, trial_id: str) -> int:
    """The epoch of the trial's newest checkpoint in Tune's saved experiment state — what `--resume` restores
    (the study's one-worker trials train in their Tune actors, so Tune keeps their checkpoints); 0 if none."""
    import cloudpickle

    states = sorted(storage.glob("demo-*/experiment_state-*.json"))
    try:
        for trial, meta in json.loads(states[-1].read_text())["trial_data"] if states else []:
            trial, meta = (json.loads(x) if isinstance(x, str) else x for x in (trial, meta))
            if trial["trial_id"] == trial_id:
                manager = cloudpickle.loads(bytes.fromhex(meta["checkpoint_manager"]["value"]))
                latest = manager.latest_checkpoint_result
                return int(latest.metrics["epoch"]) if latest else 0
    except (OSError, ValueError, KeyError, TypeError, EOFError):  # being written
        return 0
    return 0


def _signal_session(sid: int, sig: int) -> None:
    """Signal every process of the study's session: Ray's worker processes (the Train controller and
    workers among them) run in process groups of their own, so `killpg` would leave them running."""
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            if os.getsid(pid) == sid:
                os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _mid_run(storage: Path, db: Path) -> tuple[set[str], set[str]]:
    """(finished trial runs, running trials with a registered checkpoint and epochs still to log)."""
    done = {r[0] for r in _query(db, "select run_uuid from tags where key='status' and value!='running'")}
    logged = dict(_query(db, "select t.value, count(m.step) from tags t join tags s on t.run_uuid = s.run_uuid "
                             "left join metrics m on m.run_uuid = t.run_uuid and m.key = 'epoch' "
                             "where t.key='trial_id' and s.key='status' and s.value='running' group by t.value"))
    return done, {t for t, n in logged.items() if n < 3 and _checkpointed_epoch(storage, t) > 0}


def test_killed_study_resumes_without_rerunning_or_duplicating(tmp_path, cifar10_dir, data_cache):
    storage, db = tmp_path / "results", tmp_path / "results" / "mlflow.db"
    cmd = [sys.executable, "-m", "study.run", "--space", "demo", "--storage", str(storage),
           "--data-dir", cifar10_dir, *SMALL]
    first_log = tmp_path / "study-first.log"
    first = start_logged(cmd, first_log, cwd=REPO, env=_env(data_cache), start_new_session=True)
    deadline = time.time() + 420
    # Kill once a trial has finished while another is mid-run: a registered checkpoint, epochs still to go.
    # The study is frozen (SIGSTOP, whole session) before the state is judged: what is judged is what gets killed.
    while time.time() < deadline and first.poll() is None:
        time.sleep(1)
        if not _mid_run(storage, db)[1]:
            continue
        _signal_session(first.pid, signal.SIGSTOP)
        finished, interrupted = _mid_run(storage, db)
        if finished and interrupted:
            break
        _signal_session(first.pid, signal.SIGCONT)
    assert first.poll() is None, describe(cmd, first_log, f"ended (status {first.returncode}) before it could be "
                                                          "interrupted")
    _signal_session(first.pid, signal.SIGKILL)  # the driver and its local Ray, all frozen since the check
    first.wait()
    uri = f"sqlite:///{db}"
    client, _, before = _trial_runs(uri)
    finished = {r.info.run_id: r.info.end_time for r in before if r.data.tags["status"] != "running"}
    # interrupted: epochs logged at the kill (MLflow's ledger), for running trials with a registered checkpoint
    interrupted = {r.info.run_id: len(_epochs(client, r)) for r in before if r.data.tags["status"] == "running"
                   and _checkpointed_epoch(storage, r.data.tags["trial_id"]) > 0}
    interrupted = {run_id: logged for run_id, logged in interrupted.items() if logged < 3}
    assert finished and interrupted, describe(cmd, first_log, "was killed")

    resumed = assert_succeeds([sys.executable, "-m", "study.run", "--space", "demo", "--storage", str(storage),
                               "--resume"], tmp_path / "study-resumed.log", cwd=REPO, env=_env(data_cache),
                              timeout=600).output
    assert "best test_top1 = " in resumed and "mlflow ui --backend-store-uri" in resumed

    client, parents, after = _trial_runs(uri)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parents[0].info.run_id)} == {"space.json", "report"}
    report = {a.path for a in client.list_artifacts(parents[0].info.run_id, "report")}
    assert {"report/table.md", "report/trials.parquet", "report/figures"} <= report
    assert "## Test top-1, best epoch" in resumed and "## Study budget" in resumed
    assert parents[0].data.params["budget.num_samples"] == "4"
    assert 0 < parents[0].data.metrics["train_fraction"] <= 1 and "start_overhead_median_seconds" in parents[0].data.metrics
    assert len(after) == 4 and all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in after)
    for run in after:
        epochs = _epochs(client, run)
        assert epochs == list(range(1, len(epochs) + 1)), (run.info.run_name, epochs)  # each epoch exactly once
        status = run.data.tags["status"]
        assert status == ("completed" if epochs[-1] == 3 else "stopped_by_asha"), (run.info.run_name, status)
        assert len(client.get_metric_history(run.info.run_id, "test_top1")) == len(epochs)
        assert {"lr", "optimizer", "batch_size", "seed"} <= set(run.data.params)
        assert "telemetry.parquet" in {a.path for a in client.list_artifacts(run.info.run_id)}
        # the start overhead (from Tune starting the trial to its first report) and its split; a resumed
        # attempt's first report repeats an epoch MLflow has already, so only single-attempt trials add up
        overhead, launch, setup = ([m.value for m in client.get_metric_history(run.info.run_id, k)]
                                   for k in ("start_overhead_seconds", "launch_seconds", "setup_seconds"))
        assert launch and all(s > 0 for s in setup), (overhead, launch, setup)
        if run.info.run_id not in interrupted:
            assert len(overhead) == len(launch) == len(setup) == 1, (overhead, launch, setup)
            assert overhead[0] - launch[0] == pytest.approx(setup[0])
        if run.info.run_id in finished:
            assert run.info.end_time == finished[run.info.run_id]  # not re-run
    # Continued from a checkpoint, not from scratch: epochs logged before the kill keep restarts 0 (each epoch
    # is logged once; one the resumed run repeats after its checkpoint is not logged again), later ones 1.
    for run_id, logged in interrupted.items():
        restarts = {int(m.step): m.value for m in client.get_metric_history(run_id, "restarts")}
        assert restarts == {e: float(e > logged) for e in range(1, max(restarts) + 1)}, (logged, restarts)
        assert max(restarts) > logged


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("ray", path=str(Path(sys.executable).parent)) is None, reason="ray CLI not installed")
def test_ray_job_submission_to_a_local_head(tmp_path, cifar10_dir, data_cache):
    ray_cli = str(Path(sys.executable).parent / "ray")
    port, dashboard = _free_port(), _free_port()
    # the job's `python` is this environment's (as with an activated virtualenv)
    # token auth (Ray's default for new clusters) for the head and the job client alike
    env = {**_env(data_cache), "RAY_ADDRESS": "", "RAY_AUTH_MODE": "token",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    try:
        assert_succeeds([ray_cli, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                         "--num-cpus=8", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                         f"--dashboard-port={dashboard}", "--disable-usage-stats"],
                        tmp_path / "ray-start.log", env=env, timeout=180)
        storage = tmp_path / "results"
        submit = [ray_cli, "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--working-dir", str(REPO),
                  "--", "python", "-m", "study.run", "--space", "demo", "--set", "epochs=1", "--num-samples", "2",
                  "--set", "limit=600", "--set", "test_limit=200", "--set", "batch_size=200", "--set", "workers=2",
                  "--data-dir", cifar10_dir, "--storage", str(storage)]
        # Right after `ray start` the head's job agent may not be up yet: Ray answers 500 "No available agent to
        # submit job, please try again later" without creating a job (seen once in CI), so trying again is safe.
        deadline = time.monotonic() + JOB_AGENT_WAIT_S
        while "No available agent to submit job" in (job := run_logged(submit, tmp_path / "ray-job.log", env=env,
                                                                       timeout=600)).output:
            assert time.monotonic() < deadline, job.explain()
            time.sleep(2)
        assert job.returncode == 0 and "succeeded" in job.output.lower(), job.explain()
        client, parents, trials = _trial_runs(f"sqlite:///{storage / 'mlflow.db'}")
        assert len(parents) == 1 and len(trials) == 2
        assert all(_epochs(client, r) == [1] for r in trials)
        for run in trials:  # 2-worker trials run as Ray Train jobs (gloo DDP), with the same records
            assert run.data.tags["status"] == "completed"
            assert "telemetry.parquet" in {a.path for a in client.list_artifacts(run.info.run_id)}
            trial_id = run.data.tags["trial_id"]
            assert list(storage.glob(f"demo-*/train/{trial_id}/epoch_0001/history.json")), trial_id
        assert "report/table.md" in {a.path for a in client.list_artifacts(parents[0].info.run_id, "report")}
    finally:  # also after a failed start: `ray stop` resets /tmp/ray/ray_current_cluster
        assert_succeeds([ray_cli, "stop", "--force"], tmp_path / "ray-stop.log", env=env, timeout=120)
