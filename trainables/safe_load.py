"""Our own files read back with torch's weights-only unpickler: tensors, numbers, strings and plain containers.

Checkpoints (`state.pt`) and the decode cache may live where others can write — a team's bucket under
`--storage s3://…`, a cache folder shared between users — and an unrestricted `torch.load` (full pickle) would run
whatever a pickled object's `__reduce__` names on every node that reads them. Nothing of ours needs more
than torch's allowlist, so nothing else is accepted: such a file is refused with one error naming it.
(Ray Tune's own experiment state stays pickled by Ray: the README states that trust boundary.)
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch


class UnsafeFileError(ValueError):
    """A file of ours holds more than tensors and plain containers: refused, never unpickled."""


def load_plain(path: str | Path, shown_as: str | None = None, map_location: Any = None) -> Any:
    """`torch.load` with `weights_only=True`; a disallowed object → `UnsafeFileError` naming the file
    (`shown_as`: how to name it when `path` is a local copy, e.g. of a checkpoint in a bucket)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "WeightsUnpickler error" not in str(err):  # not a refusal: a corrupt file, the caller's to handle
            raise
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f"a pickled {found.group(1)}" if found else "an object torch's allowlist refuses"
        raise UnsafeFileError(f"{shown_as or path}: refused to load: it holds {what}, not only tensors and "
                              f"plain containers; a file this project wrote never does, so it was replaced or "
                              f"tampered with") from None
