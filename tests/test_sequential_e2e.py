"""End to end, the sequential confirm: a study whose one comparison has a real gap and whose other has none
(`tests/sequential_study.py`), killed as its second round of seeds starts and resumed: the gap is decided
after the first round (3 seeds, below the bound of 5), the other comparison alone gets more seeds and ends
at its bound (or as no practical difference), and no trial runs twice."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from subprocs import REPO, assert_succeeds, describe, signal_session, start_logged

LAUNCHER = [sys.executable, str(REPO / "tests" / "sequential_study.py"), "--space", "sequential_e2e"]
FIRST_ROUND, BOUND = 3, 5  # the space's seeds and max_seeds; the study's --seed is 0, so confirm seeds are 1, 2, …
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _env(data_cache: str) -> dict[str, str]:
    return {**os.environ, "LAYERWISE_CACHE": data_cache, "PYTHONPATH": str(REPO)}


def _second_round_started(storage: Path) -> bool:
    """Whether a confirm trial of a second round (a seed beyond the first round's) has its MLflow run and is in
    Tune's saved experiment state (what `--resume` restores: killed before that, Tune would not know it)."""
    try:
        with sqlite3.connect(storage / "mlflow.db") as con:
            ids = [row[0] for row in con.execute(
                "select t.value from params p join tags g on g.run_uuid = p.run_uuid and g.key = 'stage' "
                "and g.value = 'confirm' join tags t on t.run_uuid = p.run_uuid and t.key = 'trial_id' "
                f"where p.key = 'seed' and cast(p.value as integer) > {FIRST_ROUND}")]
        states = sorted(storage.glob("sequential_e2e-*/experiment_state-*.json"))
        return bool(ids and states) and any(i in states[-1].read_text() for i in ids)
    except (sqlite3.Error, OSError):
        return False


def _kill_at_second_round(proc, cmd: list[str], log: Path, storage: Path) -> None:
    deadline = time.time() + 420
    while time.time() < deadline and proc.poll() is None and not _second_round_started(storage):
        time.sleep(0.3)
    assert proc.poll() is None, describe(cmd, log, f"ended (status {proc.returncode}) before its second round")
    signal_session(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def sequential_study(tmp_path_factory, cifar10_dir, data_cache):
    """The study killed at its second round and resumed: (MLflow client, trial runs, parent run, resumed output)."""
    tmp = tmp_path_factory.mktemp("sequential")
    storage, env = tmp / "results", _env(data_cache)
    cmd = [*LAUNCHER, "--storage", str(storage), "--data-dir", cifar10_dir]
    log = tmp / "until-kill.log"
    _kill_at_second_round(start_logged(cmd, log, cwd=REPO, env=env, start_new_session=True), cmd, log, storage)
    resumed = assert_succeeds([*LAUNCHER, "--storage", str(storage), "--resume"], tmp / "resumed.log", cwd=REPO,
                              env=env, timeout=600).output
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sequential_e2e")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "trial_id" not in r.data.tags]
    assert len(parents) == 1
    return client, [r for r in runs if "trial_id" in r.data.tags], parents[0], resumed


def _confirm_seeds(trials) -> dict[str, list[int]]:
    seeds: dict[str, list[int]] = {}
    for run in trials:
        if run.data.tags["stage"] == "confirm":
            seeds.setdefault(run.data.tags["variant"], []).append(int(run.data.params["seed"]))
    return {variant: sorted(found) for variant, found in seeds.items()}


def test_the_real_gap_is_decided_after_the_first_round_and_only_the_open_comparison_gets_more_seeds(
        sequential_study):
    _, trials, _, _ = sequential_study
    assert _confirm_seeds(trials) == {"lamb_nowarmup": [1, 2, 3], "lamb_warmup": [1, 2, 3, 4, 5],
                                      "lambc": [1, 2, 3, 4, 5]}
    confirm = [run for run in trials if run.data.tags["stage"] == "confirm"]
    assert {(run.info.run_name, run.data.tags["status"]) for run in confirm} == {
        (run.info.run_name, "completed") for run in confirm}


def test_no_trial_ran_twice_across_the_kill(sequential_study):
    client, trials, _, _ = sequential_study
    runs = Counter((r.data.tags["variant"], r.data.tags["stage"], r.data.params["seed"]) for r in trials)
    assert max(runs.values()) == 1 and len(runs) == 3 + 13  # 3 search trials; confirm: 3 × 3, then 2 × 2
    for run in trials:  # each epoch logged once, the interrupted trial's included
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "epoch"))
        full = run.data.tags["status"] != "stopped_by_asha"
        assert steps == ([1, 2] if full else [1]), (run.info.run_name, steps)


def test_the_verdicts_lead_the_study_description_and_its_summary(sequential_study):
    _, _, parent, resumed = sequential_study
    for text in (parent.data.tags["mlflow.note.content"], resumed):
        assert "LAMB + warm-up better" in text
        line = next(line for line in text.splitlines() if "LAMBC − LAMB (warm-up)" in line)
        assert ("open" in line and f"{BOUND}/{BOUND}" in line and "remain possible" in line) or \
            "no practical difference" in line, line
    description = parent.data.tags["mlflow.note.content"]
    assert description.index("LAMB + warm-up better") < description.index("Test top-1")  # verdicts lead
