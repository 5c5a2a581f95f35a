"""The ways a study ends early, and the exit status each one means."""

from __future__ import annotations

import errno
import sqlite3

INPUT_ERROR = 2  # the user's input or environment is wrong
PLATFORM_ERROR = 1  # the platform or a dependency failed (Ray could not start, the study crashed)


def stopped_status(signum: int) -> int:
    """The exit status of a study a signal stopped with its state saved for --resume: 128 + the signal's number, as
    shells report a command the signal ended (130 for Ctrl+C, 143 for SIGTERM, 129 for SIGHUP)."""
    return 128 + signum


class InputError(Exception):
    """Bad command-line input or environment: reported as one line, exit status 2."""


class PlatformError(Exception):
    """Ray, MLflow or the study itself failed: reported as one line, exit status 1."""


def one_line(err: BaseException) -> str:
    """An exception as one line: its type (unless one of ours) and its message with whitespace collapsed."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, (InputError, PlatformError)) else f"{type(err).__name__}: {text}"


FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # no space left on the device; over the user's disk quota


def full_disk(err: BaseException | None) -> BaseException | None:
    """The full-disk error among `err`, its causes and the exceptions it was raised while handling, if any: an
    OSError (ENOSPC, EDQUOT), or SQLite's SQLITE_FULL under MLflow's SQLAlchemy error. Tune re-raises a callback's
    error as a TuneError carrying only its traceback's text, the original as its context."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in FULL_DISK_ERRNOS:
            return err
        if isinstance(err, sqlite3.Error) and getattr(err, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return err
        err = err.__cause__ or err.__context__
    return None
