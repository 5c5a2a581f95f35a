"""Ctrl+C stops a study with its state saved, closes its parent run as KILLED, says how to continue it and exits
130 (it once exited 0 with a report of a study cut short); SIGTERM (`kill`, `ray job stop`) the same with 143 (it
once ended the driver mid-step with Ray's abort trace, its parent run left RUNNING); a closed terminal (its hang-up,
then SIGHUP to the study's process group) the same with 129, saying nothing to the terminal that is gone (it once
ended the driver at once, its parent run left RUNNING; then, with Ray's daemons dead beside it, hung ~60 s); `--resume` then finishes it.
Outside Tune's fit — the data decoding, Ray starting, the parent run opening — Ctrl+C and SIGTERM end the study with
one line and the same exit statuses."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study.errors import INPUT_ERROR, stopped_status
from study.run import main
from trainables.records import STUDY_WALL_METRIC
from subprocs import (REPO, SHORT_STUDY, as_from_a_terminal, assert_succeeds, describe, in_session, left_in_session,
                      start_logged, wait_for, wait_for_text)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _parent(storage: Path):
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    (parent,) = [r for r in runs if "trial_id" not in r.data.tags]
    return parent, [r for r in runs if "trial_id" in r.data.tags]


class Terminal:
    """A pseudo-terminal as the study's stdout and stderr, copied into `log` until it hangs up."""

    def __init__(self, log: Path):
        self.master, self.slave = pty.openpty()
        self.log, self.closing = log, threading.Event()
        self.log.write_bytes(b"")
        self.copier = threading.Thread(target=self._copy, daemon=True)
        self.copier.start()

    def _copy(self) -> None:
        while not self.closing.is_set():
            if select.select([self.master], [], [], 0.1)[0]:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # every writer gone
                    return
                with self.log.open("ab") as out:
                    out.write(chunk)

    def start(self, cmd: list[str], **popen) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, stdout=self.slave, stderr=self.slave, stdin=subprocess.DEVNULL,
                                preexec_fn=as_from_a_terminal, **popen)
        os.close(self.slave)
        return proc

    def hang_up(self, pid: int, signum: int) -> None:
        """What closing a terminal window does: the terminal goes (a write to it fails from then on), then SIGHUP to
        its foreground process group — the study's, where the local Ray's daemons are too."""
        self.closing.set()
        self.copier.join()
        os.close(self.master)
        os.killpg(pid, signum)


def _started(stop: str, cmd: list[str], log: Path, env: dict) -> tuple[subprocess.Popen, object]:
    """The study started as `stop` needs, and how to send it the signal."""
    if stop == "hang_up":
        terminal = Terminal(log)
        return terminal.start(cmd, cwd=REPO, env=env, start_new_session=True), terminal.hang_up
    return (start_logged(cmd, log, cwd=REPO, env=env, start_new_session=True, preexec_fn=as_from_a_terminal),
            STOPS[stop][1])


# Ctrl+C reaches a terminal's foreground process group; `kill` and `ray job stop` signal the driver's process; a
# terminal that closes hangs up, and the kernel signals its session's processes
STOPS = {"ctrl_c": (signal.SIGINT, os.killpg, ""), "sigterm": (signal.SIGTERM, os.kill, " by SIGTERM"),
         "hang_up": (signal.SIGHUP, None, " by SIGHUP")}


@pytest.mark.parametrize("stop", STOPS)
def test_a_signal_stops_the_study_for_resume(stop, tmp_path, capsys, cifar10_dir, data_cache):
    signum, _, by = STOPS[stop]
    storage = tmp_path / "results"
    env = {**os.environ, "LAYERWISE_CACHE": data_cache}
    cmd = [sys.executable, "-m", "study.run", "--storage", str(storage), "--data-dir", cifar10_dir, *SHORT_STUDY]
    log = tmp_path / "interrupted.log"
    proc, send = _started(stop, cmd, log, env)
    # the first trial's end: 5 of 6 trials still to run, two at a time (~5 s each here)
    wait_for_text(" terminated after ", proc, cmd, log, "ended a trial", 300)
    # a second driver for the running study (once ran it twice at once): refused, the study left alone
    assert main(["--space", "demo", "--storage", str(storage), "--resume"]) == INPUT_ERROR
    assert re.match(r"error: study demo-\S+ is running \(pid \d+ on ", capsys.readouterr().err)
    send(proc.pid, signum)
    proc.wait(timeout=120)
    output = log.read_text(errors="replace")
    assert proc.returncode == stopped_status(signum), describe(cmd, log, f"exited with status {proc.returncode}")
    parent, _ = _parent(storage)
    said = (f"interrupted{by}: study {parent.info.run_name} stopped with its state saved; "
            f"continue it with: python -m study.run --space demo --storage {storage} --resume")
    if stop == "hang_up":  # said to no one: the terminal is gone
        assert said not in output and not (storage / parent.info.run_name / "error.log").exists()
    else:
        assert output.splitlines()[-1] == said
    assert parent.info.status == "KILLED" and "report: " not in output
    stopped_wall = parent.data.metrics[STUDY_WALL_METRIC]  # the stopped session's, which the resumed one adds to

    resumed = assert_succeeds([sys.executable, "-m", "study.run", "--space", "demo", "--storage", str(storage),
                               "--resume"], tmp_path / "resumed.log", cwd=REPO, env=env, timeout=600).output
    parent, trials = _parent(storage)
    assert "progress: 6/6 trials done" in resumed and "report: " in resumed
    assert parent.info.status == "FINISHED"
    session, total = map(int, re.search(r"study: (\d+) s \((\d+) s with its earlier sessions\)", resumed).groups())
    assert parent.data.metrics[STUDY_WALL_METRIC] == pytest.approx(stopped_wall + session, abs=1) == total
    assert len(trials) == 6 and all(r.info.status == "FINISHED" for r in trials), [r.info.status for r in trials]


def test_a_hang_up_ignored_from_the_start_stays_ignored():
    """`nohup python -m study.run …` starts the study with SIGHUP ignored: a closed terminal must not stop it."""
    from study.tuner import fit_until_stopped

    class TuneLike:
        def fit(self) -> str:
            signal.signal(signal.SIGINT, lambda *_: None)  # as Tune's fit: its own SIGINT handler for the fit
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)
            return "finished"

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert fit_until_stopped(TuneLike()) == ("finished", None)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_a_stop_outside_the_fit_raises_once_then_does_what_the_signal_did():
    """Outside Tune's fit a stop signal raises `Stopped` (taken as Ctrl+C is); a second one does what it did before
    the study, at once — also after `ray.init`, which once had the handler put back (`take`) after a stop."""
    from study.signals import StopSignals, Stopped, signal_of

    seen = []

    def before(signum, frame) -> None:
        seen.append(signum)

    previous = signal.signal(signal.SIGHUP, before)
    try:
        stops = StopSignals()
        stops.take()
        with pytest.raises(Stopped) as stop:
            os.kill(os.getpid(), signal.SIGHUP)
        assert signal_of(stop.value) == signal.SIGHUP and seen == []
        stops.take()  # as `through_ray_start` does after Ray's start
        os.kill(os.getpid(), signal.SIGHUP)
        assert seen == [signal.SIGHUP]
        stops.give_back()
        assert signal.getsignal(signal.SIGHUP) is before
    finally:
        signal.signal(signal.SIGHUP, previous)


@pytest.mark.parametrize("stop", ["ctrl_c", "sigterm"])
def test_a_signal_before_the_study_starts_records_nothing(stop, tmp_path, cifar10_dir):
    """Ctrl+C while a first study decodes its data (7 s for CIFAR-10 here) once printed a KeyboardInterrupt traceback
    from inside PIL and exited 1; SIGTERM there ended it without a word."""
    signum, send, by = STOPS[stop]
    storage = tmp_path / "results"
    env = {**os.environ, "LAYERWISE_CACHE": str(tmp_path / "empty-cache")}  # so that it decodes
    cmd = [sys.executable, "-m", "study.run", "--storage", str(storage), "--data-dir", cifar10_dir, *SHORT_STUDY]
    log = tmp_path / "early.log"
    proc = start_logged(cmd, log, cwd=REPO, env=env, start_new_session=True, preexec_fn=as_from_a_terminal)
    wait_for_text("data: decoding ", proc, cmd, log, "decoded", 120)
    time.sleep(0.5)
    send(proc.pid, signum)
    proc.wait(timeout=60)
    output = log.read_text(errors="replace")
    assert proc.returncode == stopped_status(signum), describe(cmd, log, f"exited {proc.returncode}")
    assert output.splitlines()[-1] == f"interrupted{by} before the study started: nothing was recorded"
    assert "Traceback" not in output and not storage.exists()


def test_sigterm_while_ray_starts_records_nothing(tmp_path, cifar10_dir, data_cache):
    """SIGTERM while the local Ray starts (~4 s here) once met Ray's own handler (`sys.exit(15)`): exit 15 without a
    word. Its daemons go with the study, and the MLflow store opened beside Ray's start is not left behind."""
    storage = tmp_path / "results"
    env = {**os.environ, "LAYERWISE_CACHE": data_cache}
    cmd = [sys.executable, "-m", "study.run", "--storage", str(storage), "--data-dir", cifar10_dir, *SHORT_STUDY]
    log = tmp_path / "ray-start.log"
    proc = start_logged(cmd, log, cwd=REPO, env=env, start_new_session=True, preexec_fn=as_from_a_terminal)
    wait_for(lambda: "gcs_server" in in_session(proc.pid).values(), proc, cmd, log, "started Ray", 120)  # its first
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    output = log.read_text(errors="replace")
    assert proc.returncode == stopped_status(signal.SIGTERM), describe(cmd, log, f"exited {proc.returncode}")
    assert output.splitlines()[-1] == "interrupted by SIGTERM before the study started: nothing was recorded"
    assert "Started a local Ray instance" not in output and "Traceback" not in output
    assert not (storage / "mlflow.db").exists()
    assert not (left := left_in_session(proc.pid)), left  # the daemons go with their parent (PR_SET_PDEATHSIG)


def test_sigterm_as_the_parent_run_opens_stops_the_study_for_resume(tmp_path, cifar10_dir, data_cache):
    """SIGTERM as the study's parent run opens, before Tune's fit, once met Ray's driver handler (`sys.exit(15)`):
    exit 15 without a word, the parent run left RUNNING; and a study stopped there (so too by Ctrl+C) had no Tune
    state to restore: `--resume` failed ("Failed to open local file …/tuner.pkl"). It now starts the study anew."""
    storage = tmp_path / "results"
    env = {**os.environ, "LAYERWISE_CACHE": data_cache}
    cmd = [sys.executable, "-m", "study.run", "--storage", str(storage), "--data-dir", cifar10_dir, *SHORT_STUDY]
    log = tmp_path / "early.log"
    proc = start_logged(cmd, log, cwd=REPO, env=env, start_new_session=True, preexec_fn=as_from_a_terminal)
    wait_for_text("MLflow experiment 'demo' run ", proc, cmd, log, "opened its parent run", 300,
                  every=0.01)  # printed ~0.2 s before the fit
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=120)
    output = log.read_text(errors="replace")
    assert proc.returncode == stopped_status(signal.SIGTERM), describe(cmd, log, f"exited {proc.returncode}")
    parent, trials = _parent(storage)
    assert output.splitlines()[-1] == (f"interrupted by SIGTERM: study {parent.info.run_name} stopped with its state "
                                       f"saved; continue it with: python -m study.run --space demo --storage "
                                       f"{storage} --resume"), describe(cmd, log, "said otherwise")
    assert parent.info.status == "KILLED" and not trials and "Traceback" not in output

    resumed = assert_succeeds([sys.executable, "-m", "study.run", "--space", "demo", "--storage", str(storage),
                               "--resume"], tmp_path / "resumed.log", cwd=REPO, env=env, timeout=600).output
    parent, trials = _parent(storage)
    assert "progress: 6/6 trials done" in resumed and parent.info.status == "FINISHED"
    assert len(trials) == 6 and all(r.info.status == "FINISHED" for r in trials), [r.info.status for r in trials]
