"""The signals that stop a study besides Ctrl+C, and how the driver takes them outside Tune's fit.

Beside Tune's SIGINT: `kill`, `ray job stop`, a scheduler's preemption (SIGTERM); a closed terminal or a dropped
SSH session (SIGHUP). Left to their defaults (Ray's `ray.init` makes SIGTERM `sys.exit(15)` in the driver; SIGHUP
ends the process), each ended the study mid-step: its parent run and its running trials' runs left RUNNING, Ray's
agents alive 40 s and more after it, up to 2 s of Tune's state lost. In Tune's fit they take Tune's own stop
(`study.tuner.fit_until_stopped`); outside it — while the data decodes, Ray starts, the report is built — they
raise `Stopped`, a KeyboardInterrupt, and the study ends as Ctrl+C ends it there, with the signal's exit status.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """A `STOP_SIGNALS` signal outside Tune's fit, taken as Ctrl+C is taken there."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def handlers_found() -> dict[int, object]:
    """Each `STOP_SIGNALS` signal's handler now (SIG_DFL for one set outside Python), but for those ignored: a
    process started ignoring one (`nohup`'s SIGHUP) keeps it ignored."""
    return {s: h or signal.SIG_DFL for s in STOP_SIGNALS if (h := signal.getsignal(s)) is not signal.SIG_IGN}


def signal_of(interrupt: KeyboardInterrupt) -> int:
    """The signal behind an interrupt: Ctrl+C's SIGINT unless it is a `Stopped`."""
    return getattr(interrupt, "signum", signal.SIGINT)


def terminal_fds() -> list[int]:
    """Which of stdout and stderr are a terminal, now: once it has hung up, `isatty` says no (its tcgetattr fails)."""
    return [fd for fd in (1, 2) if os.isatty(fd)]


def detach(fds: list[int]) -> None:
    """Point these descriptors (a terminal that hung up) at /dev/null: every write to a hung-up terminal fails (EIO),
    and the stop's own lines (Tune's, the console's, the resume command) would fail the stop halfway. A SIGHUP sent
    by hand to a study whose terminal is alive keeps its output there."""
    null = os.open(os.devnull, os.O_WRONLY)
    for fd in fds:
        os.dup2(null, fd)
    os.close(null)


def detach_hung_up(consoles: list[int]) -> None:
    """`detach` those of `consoles` (the terminal fds found before the signal) that are no longer a terminal."""
    detach([fd for fd in consoles if not os.isatty(fd)])


class StopSignals:
    """Raise `Stopped` on a `STOP_SIGNALS` signal the process was not started ignoring (`nohup`'s SIGHUP stays
    ignored), from `take()` until `give_back()`; a second one does what the signal did before, at once."""

    def __init__(self):
        self.found = handlers_found()
        self.consoles = terminal_fds()
        self.stopped = False

    def take(self) -> None:
        """Install the handler (again after `ray.init`, which puts its own on SIGTERM) unless a stop has come; only
        the main thread can."""
        if threading.current_thread() is threading.main_thread() and not self.stopped:
            for signum in self.found:
                signal.signal(signum, self._raise_stopped)

    def give_back(self) -> None:
        """The handlers found at the start, for an in-process caller."""
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self.found.items():
                signal.signal(signum, handler)

    def _raise_stopped(self, signum: int, frame) -> None:
        if signum == signal.SIGHUP:
            detach_hung_up(self.consoles)
        self.stopped = True
        signal.signal(signum, self.found[signum])
        raise Stopped(signum)


@contextlib.contextmanager
def through_ray_start(stops: StopSignals) -> Iterator[None]:
    """Around `ray.init`: it puts its own handler on SIGTERM first thing (`sys.exit(signum)`, ray/_private/worker.py,
    Ray 2.60), so a SIGTERM while Ray starts (~4 s here) raised SystemExit(15) and the study exited 15 without a word.
    That exit is a `Stopped` as anywhere else; the handler is taken back after."""
    try:
        yield
    except SystemExit as exit_:
        if exit_.code != signal.SIGTERM:
            raise
        stops.stopped = True
        raise Stopped(signal.SIGTERM) from None
    finally:
        stops.take()
