"""The project's per-user cache folder: decoded datasets (`trainables.data`) and the empty MLflow store new
stores start from (`study.mlflow_store`). Light on purpose (no torch): a study's checks name it."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "LAYERWISE_CACHE"  # the cache's folder, when set (tests give each session its own)


def user_cache() -> Path:
    """The per-user folder of this project: `$XDG_CACHE_HOME/layerwise-study` (default `~/.cache/…`)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "layerwise-study"


def cache_dir() -> Path:
    """Where cached files go: `$LAYERWISE_CACHE`, else `user_cache()`."""
    return Path(os.environ.get(CACHE_ENV) or user_cache())
