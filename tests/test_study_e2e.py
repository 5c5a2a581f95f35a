"""End to end: `python -m study.run` as users run it — killed in its search stage and again in its confirm
stage, and resumed each time (one-worker trials, trained in their Tune actors), and submitted as a Ray
job (two-worker trials, run as Ray Train jobs).

Both run a shrunken `demo` with a real local Ray and a real MLflow sqlite store in a temp folder, then
read the store back.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import cloudpickle
import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from clusters import CLUSTER_MARKER, stop_cluster
from study.optuna_store import JOURNAL_FILE, ORPHAN_ATTR, TRIAL_NAME_ATTR
from study.tune_state import STATE_PATTERNS, staging_copy
from subprocs import REPO, assert_succeeds, describe, free_port, run_logged, signal_session, start_logged
from tampering import tamper
from trainables.local_ray import with_quoted_interpreter

EPOCHS = 3
SMALL = ["--num-samples", "1", "--confirm", "1", "--seeds", "2", "--max-seeds", "2", "--set", f"epochs={EPOCHS}", "--set", "limit=1200",
         "--set", "val_size=200", "--set", "test_limit=400", "--set", "batch_size=200", "--set", "grace_period=1", "--set", "eval_every=1",
         "--set", "reduction_factor=2"]
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


def _newest_state(storage: Path) -> Path | None:
    """The demo study's newest saved Tune experiment state (what `--resume` restores), or None before the first."""
    return max(storage.glob(f"demo-*/{STATE_PATTERNS[0]}"), default=None)


def _checkpointed_epoch(storage: Path, trial_id: str) -> int:
    """The epoch of the trial's newest checkpoint in Tune's saved experiment state — what `--resume`
    restores (the study's one-worker trials train in their Tune actors, so Tune keeps their checkpoints);
    0 if none."""
    import cloudpickle

    state = _newest_state(storage)
    try:
        for trial, meta in json.loads(state.read_text())["trial_data"] if state else []:
            trial, meta = (json.loads(x) if isinstance(x, str) else x for x in (trial, meta))
            if trial["trial_id"] == trial_id:
                manager = cloudpickle.loads(bytes.fromhex(meta["checkpoint_manager"]["value"]))
                latest = manager.latest_checkpoint_result
                return int(latest.metrics["epoch"]) if latest else 0
    except (OSError, ValueError, KeyError, TypeError, EOFError):  # being written
        return 0
    return 0


def _status_rows(output: str, metric: str = "val_top1") -> list[dict[str, str]]:
    """The rows of every status table the study's console printed, as {column: cell}."""
    rows, lines = [], output.splitlines()
    for i, header in enumerate(lines[:-1]):
        if header.split()[:1] != ["trial"] or metric not in header.split() or not lines[i + 1].startswith("-"):
            continue
        spans = [m.span() for m in re.finditer(r"-+", lines[i + 1])]
        for line in lines[i + 2:]:
            row = {header[a:b].strip(): line[a:b].strip() for a, b in spans}
            if row["stage"] not in ("search", "confirm"):  # the table ended
                break
            rows.append(row)
    return rows


def _mid_run(storage: Path, db: Path, stage: str) -> tuple[set[str], set[str]]:
    """Of `stage`'s trial runs: (finished ones, running trials with a registered checkpoint and epochs still to log)."""
    staged = f"join tags g on g.run_uuid = t.run_uuid and g.key = 'stage' and g.value = '{stage}'"
    done = {r[0] for r in _query(db, f"select t.run_uuid from tags t {staged} join runs r on r.run_uuid = t.run_uuid "
                                     "where t.key='status' and t.value!='running' and r.end_time is not null")}
    logged = dict(_query(db, f"select t.value, count(m.step) from tags t join tags s on t.run_uuid = s.run_uuid {staged} "
                             "left join metrics m on m.run_uuid = t.run_uuid and m.key = 'epoch' "
                             "where t.key='trial_id' and s.key='status' and s.value='running' group by t.value"))
    return done, {t for t, n in logged.items() if n < EPOCHS and _checkpointed_epoch(storage, t) > 0}


def _freeze_when(proc: subprocess.Popen, holds: Callable[[], bool], timeout: float = 420) -> bool:
    """SIGSTOP the study's whole session once `holds()`, and keep it frozen only if it still holds when nothing
    moves (between a check and the stop an epoch can end, or Tune be midway through rewriting its experiment
    state, read back as no checkpoint); whether it froze so before `timeout` or the study's end."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if holds():
            signal_session(proc.pid, signal.SIGSTOP)
            if holds():
                return True
            signal_session(proc.pid, signal.SIGCONT)
        time.sleep(0.5)
    return False


def _kill_mid_stage(proc, cmd: list[str], log: Path, storage: Path, db: Path, stage: str) -> None:
    """SIGKILL the study once one of `stage`'s trials has finished while another is mid-run (a registered
    checkpoint, epochs still to go), judged while frozen: what is judged is what gets killed."""
    assert _freeze_when(proc, lambda: all(_mid_run(storage, db, stage))), describe(
        cmd, log, f"ended (status {proc.returncode}) or timed out before its {stage} stage could be interrupted")
    signal_session(proc.pid, signal.SIGKILL)  # the driver and its local Ray, all frozen since the check
    proc.wait()


def _at_kill(client, storage: Path, runs) -> tuple[dict[str, int], dict[str, int]]:
    """(finished runs → end time, interrupted runs → epochs logged): the runs as a kill left them; interrupted
    are running trials with a registered checkpoint and epochs still to go."""
    # closed: the recorder tags the status, then ends the run; a kill between the two leaves it open
    finished = {r.info.run_id: r.info.end_time for r in runs if r.data.tags["status"] != "running" and r.info.end_time}
    interrupted = {r.info.run_id: len(_epochs(client, r)) for r in runs if r.data.tags["status"] == "running"
                   and _checkpointed_epoch(storage, r.data.tags["trial_id"]) > 0}
    return finished, {run_id: logged for run_id, logged in interrupted.items() if logged < EPOCHS}


def _saved_rungs(storage: Path) -> list[tuple[int, dict[str, float]]]:
    """ASHA's rungs (milestone, trial id → value; the last rung first) as the study's newest searcher state holds them."""
    newest = sorted(storage.glob(f"demo-*/{STATE_PATTERNS[2]}"))[-1]
    return cloudpickle.loads(newest.read_bytes())["scheduler"]._brackets[0]._rungs


def _search_journal(storage: Path) -> tuple[Path, list[optuna.trial.FrozenTrial]]:
    """The study's persisted Optuna journal and its trials (one Optuna study per platform study)."""
    (journal,) = storage.glob(f"demo-*/{JOURNAL_FILE}")
    store = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    (name,) = optuna.get_all_study_names(store)
    return journal, optuna.load_study(study_name=name, storage=store).get_trials()


def _get_json(url: str, deadline: float) -> dict:
    """GET `url` as JSON, retrying until `deadline` while the server starts."""
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.5)


def _dashboard_trials(journal: Path, study: str, log: Path) -> dict[str, tuple[dict[str, float], list[float]]]:
    """optuna-dashboard serving `journal` on 127.0.0.1: each trial of `study` read through its HTTP API, as
    trial name → (params, values)."""
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "optuna-dashboard"), str(journal), "--host", "127.0.0.1", "--port", str(port)]
    proc = start_logged(cmd, log)
    try:
        base = f"http://127.0.0.1:{port}/api/studies"
        listed = _get_json(base, time.time() + 60)["study_summaries"]
        (found,) = [s for s in listed if s["study_name"] == study]
        detail = _get_json(f"{base}/{found['study_id']}", time.time() + 10)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    attrs = lambda trial: {a["key"]: a["value"] for a in trial["user_attrs"]}  # noqa: E731
    return {attrs(t)[TRIAL_NAME_ATTR]: ({p["name"]: float(p["param_external_value"]) for p in t["params"]},
                                        t.get("values", [])) for t in detail["trials"] if not attrs(t).get(ORPHAN_ATTR)}


def test_a_study_killed_in_each_stage_resumes_without_rerunning_or_duplicating(tmp_path, cifar10_dir, data_cache):
    """A demo study (3 variants, 1 search trial each, then the best of each × 2 seeds) killed mid-search,
    resumed, killed mid-confirm, resumed: every trial runs once, every epoch is logged once."""
    storage, db = tmp_path / "results", tmp_path / "results" / "mlflow.db"
    uri = f"sqlite:///{db}"
    resume = [sys.executable, "-m", "study.run", "--space", "demo", "--storage", str(storage), "--resume"]
    cmd = [sys.executable, "-m", "study.run", "--space", "demo", "--storage", str(storage), "--data-dir", cifar10_dir,
           *SMALL]
    # each kill: (runs closed by then → end time, runs interrupted mid-way → epochs logged), over all stages
    # (a variant's confirm trials start while other variants may still be searching)
    kills: list[tuple[dict[str, int], dict[str, int]]] = []
    for stage, command in (("search", cmd), ("confirm", resume)):
        log = tmp_path / f"study-until-{stage}-kill.log"
        _kill_mid_stage(start_logged(command, log, cwd=REPO, env=_env(data_cache), start_new_session=True),
                        command, log, storage, db, stage)
        client, _, runs = _trial_runs(uri)
        kills.append(_at_kill(client, storage, runs))
        if stage == "search":  # what the persisted Optuna study had finished when the driver was killed
            searched_at_kill = {t.user_attrs[TRIAL_NAME_ATTR]: (t.params, t.value) for t in _search_journal(storage)[1]
                                if t.state == TrialState.COMPLETE}
        staged = {r.info.run_id for r in runs if r.data.tags["stage"] == stage}
        assert all(set(part) & staged for part in kills[-1]), describe(command, log, f"was killed in its {stage} "
                                                                                     f"stage: {kills[-1]}")
    finished = {run_id: end for closed, _ in kills for run_id, end in closed.items()}
    interrupted = {run_id for _, cut in kills for run_id in cut}

    resumed = assert_succeeds(resume, tmp_path / "study-resumed.log", cwd=REPO, env=_env(data_cache),
                              timeout=600).output
    assert "best search trial: val_top1 = " in resumed and "mlflow ui --backend-store-uri" in resumed
    # the study's console: no configuration box per trial; progress lines (9 trials planned: 3 searched, the best
    # of each × 2 seeds; 3 epochs each) and tables naming each trial by variant and number, with its val_top1
    killed = [tmp_path / f"study-until-{stage}-kill.log" for stage in ("search", "confirm")]
    for output in [log.read_text(errors="replace") for log in killed] + [resumed]:
        assert "started with configuration" not in output
        assert re.search(r"^progress: \d/9 trials done, \d+/27 trial-epochs, \w+ elapsed, ETA", output, re.M), output
    assert re.search(r"^progress: 9/9 trials done, 27/27 trial-epochs, \w+ elapsed, ended$", resumed, re.M), resumed
    rows = _status_rows(resumed)
    assert rows and all(re.fullmatch(rf"{row['variant']}-\d+", row["trial"]) for row in rows), resumed
    assert any(re.fullmatch(r"\d+(\.\d+)?", row["val_top1"]) for row in rows), resumed

    client, parents, after = _trial_runs(uri)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parents[0].info.run_id)} == {"space.json", "report", "optuna"}
    report = {a.path for a in client.list_artifacts(parents[0].info.run_id, "report")}
    assert {"report/table.md", "report/trials.parquet", "report/figures"} <= report
    assert "## Test top-1, best epoch" in resumed and "## Search stage: validation top-1" in resumed
    assert "## Study budget" in resumed
    assert parents[0].data.params["budget.num_samples"] == "1"
    assert 0 < parents[0].data.metrics["train_fraction"] <= 1 and "start_overhead_median_seconds" in parents[0].data.metrics
    search = [r for r in after if r.data.tags["stage"] == "search"]
    confirm = [r for r in after if r.data.tags["stage"] == "confirm"]
    assert len(search) == 3 and len(confirm) == 3 * 2, [r.info.run_name for r in after]
    # runs named as the console names their trials: `<variant>-<n>`, numbered on across the stages and the resumes
    variants = ("tvlars", "lars_warmup", "lars_nowarmup")
    assert sorted(r.info.run_name for r in after) == sorted(f"{v}-{n}" for v in variants for n in (1, 2, 3))
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in after)
    # the confirm stage: the search trial of each variant (the best of one), with 2 fresh seeds, to the full budget
    for variant in variants:
        (chosen,) = [r for r in search if r.data.tags["variant"] == variant]
        seeds = sorted(int(r.data.params["seed"]) for r in confirm if r.data.tags["variant"] == variant)
        assert seeds == [1, 2], (variant, seeds)  # fresh: the search trials ran with seed 0
        for run in (r for r in confirm if r.data.tags["variant"] == variant):
            assert run.data.params["lr"] == chosen.data.params["lr"], variant
            assert run.data.params["split_seed"] == chosen.data.params["split_seed"] == "0"
    for run in after:
        epochs = _epochs(client, run)
        assert epochs == list(range(1, len(epochs) + 1)), (run.info.run_name, epochs)  # each epoch exactly once
        status, stage = run.data.tags["status"], run.data.tags["stage"]
        assert status == ("completed" if epochs[-1] == EPOCHS else "stopped_by_asha"), (run.info.run_name, status)
        if stage == "confirm":
            assert epochs[-1] == EPOCHS, run.info.run_name  # no ASHA in the confirm stage
        for metric in ("val_top1", "test_top1"):
            assert len(client.get_metric_history(run.info.run_id, metric)) == len(epochs), (run.info.run_name, metric)
        assert {"lr", "optimizer", "batch_size", "seed", "val_size"} <= set(run.data.params)
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
    # The search's Optuna study, persisted in the study's folder and continued by each resume: the trials finished
    # before the kill kept as they were, one Optuna trial per search trial run (none twice), each with the run's
    # lr and its last validation top-1; trials asked just before a kill and never run are closed as orphans.
    journal, optuna_trials = _search_journal(storage)
    ran = [t for t in optuna_trials if not t.user_attrs.get(ORPHAN_ATTR)]
    assert all(t.state == TrialState.FAIL for t in optuna_trials if t.user_attrs.get(ORPHAN_ATTR))
    assert sorted(t.user_attrs[TRIAL_NAME_ATTR] for t in ran) == sorted(r.info.run_name for r in search)
    assert all(t.state == TrialState.COMPLETE for t in ran), [(t.number, t.state) for t in ran]
    assert 0 < len(searched_at_kill) < len(ran)
    assert all(by_name[name] == kept for name, kept in searched_at_kill.items()
               for by_name in [{t.user_attrs[TRIAL_NAME_ATTR]: (t.params, t.value) for t in ran}])
    for run in search:
        (trial,) = [t for t in ran if t.user_attrs[TRIAL_NAME_ATTR] == run.info.run_name]
        variant = run.data.tags["variant"]
        assert trial.params[f"{variant}/lr"] == pytest.approx(float(run.data.params["lr"]))
        assert trial.value == client.get_metric_history(run.info.run_id, "val_top1")[-1].value
    assert f"view it: optuna-dashboard {journal}" in resumed
    # … and optuna-dashboard reads the same trials through its HTTP API
    served = _dashboard_trials(journal, parents[0].info.run_name, tmp_path / "optuna-dashboard.log")
    assert served == {t.user_attrs[TRIAL_NAME_ATTR]: (t.params, [t.value]) for t in ran}
    # Continued from a checkpoint, not from scratch: an epoch's `restarts` counts the kills that came before it
    # was logged (each epoch is logged once; one a resumed run repeats after its checkpoint is not logged again).
    # A resumed search trial may be stopped by ASHA at the epoch it had reached: ASHA's rungs come back as the
    # snapshot held them, so an epoch whose result reached the driver after the snapshot is judged anew when the
    # trial repeats it (CI on 11f2b2c, when Tune restored no rungs at all: a run killed after epoch 2, stopped there
    # on resume). Every other interrupted run logs epochs after its kill, and the confirm stage's (no ASHA) always does.
    went_on = set()
    for run_id in interrupted:
        logged = [cut[run_id] for _, cut in kills if run_id in cut]  # epochs it had logged at each kill
        restarts = {int(m.step): m.value for m in client.get_metric_history(run_id, "restarts")}
        assert restarts == {e: float(sum(n < e for n in logged)) for e in range(1, max(restarts) + 1)}, (logged, restarts)
        stopped = client.get_run(run_id).data.tags["status"] == "stopped_by_asha"
        assert max(restarts) > max(logged) or (stopped and max(restarts) == max(logged)), (logged, restarts, stopped)
        went_on |= {run_id} if max(restarts) > max(logged) else set()
    assert went_on & set(kills[-1][1]), (kills, went_on)
    # ASHA's rungs carried across both resumes (saved with the searcher; Tune saves no scheduler): every search trial
    # that reached the last rung's epoch is recorded there, those that ended before a kill included
    milestone, recorded = _saved_rungs(storage)[0]
    assert {r.data.tags["trial_id"] for r in search if len(_epochs(client, r)) >= milestone} <= set(recorded), recorded


@pytest.mark.skipif(shutil.which("ray", path=str(Path(sys.executable).parent)) is None, reason="ray CLI not installed")
def test_ray_job_submission_to_a_local_head(tmp_path, cifar10_dir, data_cache):
    ray_cli = str(Path(sys.executable).parent / "ray")
    port, dashboard = free_port(), free_port()
    # the job's `python` is this environment's (as with an activated virtualenv)
    # token auth (Ray's default for new clusters) for the head and the job client alike
    marker = uuid.uuid4().hex
    env = {**_env(data_cache), "RAY_ADDRESS": "", "RAY_AUTH_MODE": "token",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", CLUSTER_MARKER: marker}
    try:
        assert_succeeds([ray_cli, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                         "--num-cpus=8", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                         f"--dashboard-port={dashboard}", "--disable-usage-stats"],
                        tmp_path / "ray-start.log", env=env, timeout=180)
        storage = tmp_path / "results"
        # Ray 2.60 starts the job's workers (its working_dir is a runtime env) through `bash -c` with the
        # interpreter's path unquoted: from a Python under a path with a space, the job names it quoted (README)
        quoted = with_quoted_interpreter(None)
        runtime_env = ["--runtime-env-json", json.dumps(quoted)] if quoted else []
        submit = [ray_cli, "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--working-dir", str(REPO),
                  *runtime_env, "--", "python", "-m", "study.run", "--space", "demo", "--variants", "lars_nowarmup", "--confirm", "0",
                  "--set", "epochs=1", "--num-samples", "2",
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
    finally:  # also after a failed start; only this head (and its job's processes), not every Ray here
        stop_cluster(marker, port)


TAMPER_EPOCHS = 12  # ~0.65 s each: the tvlars trial holds a checkpoint and epochs to go for ~7 s
TAMPER = ["--space", "demo", "--variants", "lars_warmup,tvlars", "--num-samples", "1", "--confirm", "0",
          "--set", f"epochs={TAMPER_EPOCHS}", "--set", f"grace_period={TAMPER_EPOCHS}", "--set", "eval_every=1",
          "--set", "limit=600", "--set", "val_size=100", "--set", "test_limit=200", "--set", "batch_size=100"]


def _running_with_checkpoint(storage: Path, db: Path, variant: str) -> str | None:
    """The trial id of `variant`'s running trial once Tune has registered a checkpoint of it and epochs remain."""
    rows = _query(db, "select t.value, count(m.step) from tags t join tags v on v.run_uuid = t.run_uuid "
                      f"and v.key = 'variant' and v.value = '{variant}' join tags s on s.run_uuid = t.run_uuid "
                      "and s.key = 'status' and s.value = 'running' left join metrics m on m.run_uuid = t.run_uuid "
                      "and m.key = 'epoch' where t.key = 'trial_id' group by t.value")
    return next((t for t, n in rows if n < TAMPER_EPOCHS and _checkpointed_epoch(storage, t) > 0), None)


def _staged(storage: Path) -> bool:
    """Whether Ray's staging folder holds a whole copy of the study's newest saved experiment state."""
    state = _newest_state(storage)
    return state is not None and staging_copy(state.parent, state.name) is not None


def test_a_tampered_checkpoint_fails_its_trial_naming_the_file_and_runs_nothing(tmp_path, cifar10_dir, data_cache):
    """Kill a study while its TVLARS trial has a checkpoint, put a pickled object that writes a marker file into
    that checkpoint's state.pt, cut Tune's saved experiment state short (as a kill mid-write does), `--resume`:
    the state comes back from Ray's staging copy (else Tune would start over, and the trial run again afresh),
    that trial errors naming the file, the marker is never written, the other trial trains to its end."""
    storage, db = tmp_path / "results", tmp_path / "results" / "mlflow.db"
    cmd = [sys.executable, "-m", "study.run", *TAMPER, "--storage", str(storage), "--data-dir", cifar10_dir]
    log = tmp_path / "study-until-kill.log"
    proc = start_logged(cmd, log, cwd=REPO, env=_env(data_cache), start_new_session=True)
    assert _freeze_when(proc, lambda: bool(_running_with_checkpoint(storage, db, "tvlars")) and _staged(storage)), \
        describe(cmd, log, "ended or never checkpointed its tvlars trial mid-run")
    signal_session(proc.pid, signal.SIGKILL)
    proc.wait()
    state = _newest_state(storage)
    state.write_bytes(state.read_bytes()[:1000])
    marker = tmp_path / "marker"
    tampered = [p for p in storage.glob("demo-*/**/state.pt")
                if torch.load(p, weights_only=True)["config"]["optimizer"] == "tvlars"]
    assert tampered, sorted(map(str, storage.glob("demo-*/**/state.pt")))
    for path in tampered:
        tamper(path, marker)

    resume = [sys.executable, "-m", "study.run", "--space", "demo", "--storage", str(storage), "--resume"]
    done = assert_succeeds(resume, tmp_path / "study-resumed.log", cwd=REPO, env=_env(data_cache), timeout=600)
    assert not marker.exists(), done.explain()
    assert f"resume: {state.name} was cut short (1,000 bytes: " in done.output, done.explain()
    client, _, runs = _trial_runs(f"sqlite:///{db}")
    (tvlars,) = [r for r in runs if r.data.tags["variant"] == "tvlars"]
    (other,) = [r for r in runs if r.data.tags["variant"] == "lars_warmup"]
    assert tvlars.data.tags["status"] == "errored", tvlars.data.tags
    error = tvlars.data.tags["error"]
    assert "UnsafeFileError" in error and "/state.pt: refused to load: it holds a pickled" in error, error
    assert any(str(p.parent.name) in error for p in tampered), (error, tampered)
    assert other.data.tags["status"] == "completed" and _epochs(client, other) == list(range(1, TAMPER_EPOCHS + 1))
