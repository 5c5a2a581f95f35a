"""The project's per-user cache folder: decoded datasets (`trainables.data`) and the empty MLflow store new
stores start from (`study.mlflow_store`). Light on purpose (no torch): a study's checks name it."""

from __future__ import annotations

import os
from pathlib import Path

from trainables.folders import unwritable

CACHE_ENV = "LAYERWISE_CACHE"  # the cache's folder, when set (tests give each session its own)


def user_cache() -> Path:
    """The per-user folder of this project: `$XDG_CACHE_HOME/layerwise-study` (default `~/.cache/…`)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "layerwise-study"


def cache_dir() -> Path:
    """Where cached files go: `$LAYERWISE_CACHE`, else `user_cache()`."""
    return Path(os.environ.get(CACHE_ENV) or user_cache())


def unwritable_cache() -> str | None:
    """Why the cache folder cannot be written, naming what placed it (None if it can): asked before a study's work,
    as its decoded data, MLflow template and locks go there."""
    folder = cache_dir()
    why = unwritable(folder)
    if why is None:
        return None
    source = next((f"${var}" for var in (CACHE_ENV, "XDG_CACHE_HOME") if os.environ.get(var)), "the home folder")
    return f"cannot write the cache folder {folder} (from {source}): {why}; set ${CACHE_ENV} to a writable folder"
