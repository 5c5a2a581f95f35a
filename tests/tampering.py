"""A hostile payload for files of ours: an object whose unpickling writes a marker file."""

from __future__ import annotations

from pathlib import Path

import torch


class WritesMarker:
    """Unpickling this creates the file `marker` (what a hostile `__reduce__` could do with any code)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def tamper(path: Path, marker: Path) -> None:
    """Rewrite a file of ours with a payload beside its real contents; prove the payload runs when unpickled."""
    saved = torch.load(path, weights_only=True)
    torch.save({**saved, "extra": WritesMarker(marker)}, path)
    probe = marker.with_name(marker.name + ".probe")
    torch.save(WritesMarker(probe), path.with_suffix(".probe"))
    torch.load(path.with_suffix(".probe"), weights_only=False)  # the unsafe reader would run it: the test can fail
    assert probe.is_file()
    probe.unlink()
    path.with_suffix(".probe").unlink()
