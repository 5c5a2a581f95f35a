"""Whether a folder can be written, asked before any work starts, and whether a path is a URI; torch-free, so
`reports.table` may ask too."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def is_uri(path: str | os.PathLike | None) -> bool:
    """Whether `path` is a URI (`s3://bucket/…`, `gs://…`) rather than a local path (None is neither)."""
    return path is not None and "://" in str(path)


def first_missing(path: Path) -> Path | None:
    """The topmost folder of `path` that does not exist yet (None if `path` exists)."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            return missing
        missing = folder
    return missing


def unwritable(path: Path) -> str | None:
    """Why files cannot be written in folder `path` (None if they can); leaves behind no folder it made."""
    created = first_missing(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        return err.strerror or str(err)
    finally:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
    return None
