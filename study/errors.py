"""The ways a study ends early, and the exit status each one means."""

from __future__ import annotations

INPUT_ERROR = 2  # the user's input or environment is wrong
PLATFORM_ERROR = 1  # the platform or a dependency failed (Ray could not start, the study crashed)
INTERRUPTED = 130  # Ctrl+C (SIGINT) stopped the study, its state saved for --resume: 128 + SIGINT, as shells report it


class InputError(Exception):
    """Bad command-line input or environment: reported as one line, exit status 2."""


class PlatformError(Exception):
    """Ray, MLflow or the study itself failed: reported as one line, exit status 1."""


def one_line(err: BaseException) -> str:
    """An exception as one line: its type (unless one of ours) and its message with whitespace collapsed."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, (InputError, PlatformError)) else f"{type(err).__name__}: {text}"
