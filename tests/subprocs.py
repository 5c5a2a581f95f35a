"""Subprocesses in tests: each child's stdout+stderr kept in a file under the test's temp dir, and the
end of that file in every failure message, so a red CI run says why without a rerun."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]  # where tests start `python -m study.run`
TAIL_LINES = 40
# a 6-trial, 3-epoch study of the demo space (~30 s here, two trials at a time): the end-to-end tests' unit
SHORT_STUDY = ["--space", "demo", "--variants", "lars_nowarmup", "--confirm", "0", "--num-samples", "6",
               "--set", "epochs=3", "--set", "limit=1200", "--set", "test_limit=200"]


def tail(log: Path, lines: int = TAIL_LINES) -> str:
    """The last `lines` lines of a log file ('' if it does not exist)."""
    try:
        text = Path(log).read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def describe(cmd: list[str], log: Path, what: str) -> str:
    """`cmd` + what happened + the end of its log: the body of an assertion message."""
    return f"`{shlex.join(map(str, cmd))}` {what}; last {TAIL_LINES} lines of {log}:\n{tail(log)}"


@dataclass
class Finished:
    """A child that ran to its end: its command, exit status and log file."""

    cmd: list[str]
    returncode: int
    log: Path

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def explain(self) -> str:
        return describe(self.cmd, self.log, f"exited with status {self.returncode}")


def run_logged(cmd: list[str], log: Path, *, timeout: float, **popen: Any) -> Finished:
    """Run `cmd` to its end with its output in `log`; a time-out is an assertion naming the log's tail."""
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        try:
            done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  timeout=timeout, **popen)
        except subprocess.TimeoutExpired:
            raise AssertionError(describe(cmd, log, f"did not finish within {timeout:.0f} s")) from None
    return Finished(list(cmd), done.returncode, log)


def assert_succeeds(cmd: list[str], log: Path, *, timeout: float, **popen: Any) -> Finished:
    """`run_logged`, asserting exit status 0 (the message carries the child's last lines)."""
    done = run_logged(cmd, log, timeout=timeout, **popen)
    assert done.returncode == 0, done.explain()
    return done


def start_logged(cmd: list[str], log: Path, **popen: Any) -> subprocess.Popen:
    """Start `cmd` in the background with its output in `log` (closed when the child is reaped)."""
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **popen)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def in_session(sid: int) -> dict[int, str]:
    """The processes of session `sid` (a study started in a session of its own): pid → command name."""
    found = {}
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            if os.getsid(pid) == sid:
                found[pid] = Path(f"/proc/{pid}/comm").read_text().strip()
        except (ProcessLookupError, PermissionError, FileNotFoundError):  # gone meanwhile
            pass
    return found


def wait_for(done: Callable[[], bool], proc: subprocess.Popen, cmd: list[str], log: Path, what: str,
             timeout: float, every: float = 0.05) -> None:
    """Poll `done()` while `proc` runs: an assertion saying it never `what`, with the log's end, if the child exits
    or `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not done():
        assert proc.poll() is None and time.monotonic() < deadline, describe(cmd, log, f"never {what}")
        time.sleep(every)


def wait_for_text(text: str, proc: subprocess.Popen, cmd: list[str], log: Path, what: str, timeout: float,
                  every: float = 0.05) -> None:
    """`wait_for` `text` in the child's log."""
    wait_for(lambda: text in log.read_text(errors="replace"), proc, cmd, log, what, timeout, every)


def left_in_session(sid: int, timeout: float = 30) -> dict[int, str]:
    """The session's processes still there after up to `timeout` seconds of waiting for them to go."""
    deadline = time.monotonic() + timeout
    while (left := in_session(sid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def signal_session(sid: int, sig: int) -> None:
    """Signal every process of the study's session: Ray's worker processes (the Train controller and
    workers among them) run in process groups of their own, so `killpg` would leave them running."""
    for pid in in_session(sid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def why_no_unshare() -> str | None:
    """Why a private mount namespace (`unshare --mount`, root) cannot be made here; None if it can."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, text=True)
    return None if done.returncode == 0 else f"unshare --mount is not permitted here: {done.stderr.strip()}"


def as_from_a_terminal() -> None:
    """A `preexec_fn`: SIGINT and SIGHUP at their defaults, as in a command a terminal starts. A job started in the
    background by a script, or under `nohup`, hands them on ignored — and a study respects an ignored one (CI run so
    once failed the Ctrl+C and hang-up tests: the signals never arrived)."""
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
