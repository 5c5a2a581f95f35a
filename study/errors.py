"""The ways a study ends early, and the exit status each one means."""

from __future__ import annotations

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
