"""Where a study's records live: a local folder, or what Ray Tune and Train take — `s3://…`, `gs://…`, any
URI pyarrow resolves (`pyarrow.fs.FileSystem.from_uri`, as Ray does; S3 endpoint and credentials from the
standard `AWS_*` variables, e.g. `AWS_ENDPOINT_URL` for an S3-compatible store).

A `Location` is one path in that storage: the study's own files (`study.json`, a finished trial's mark,
its checkpoints' `history.json`) are read and written through it, never through `pathlib`, so a study
whose storage is a bucket keeps nothing on the submitting machine but its MLflow store.
"""

from __future__ import annotations

import posixpath
import tempfile
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow.fs as pafs

from trainables.folders import is_uri, unwritable

# How long the storage probe waits for a remote store. One that answers takes ~0.1 s (moto here) to ~2 s; one that
# does not is retried by pyarrow's clients for minutes: 198 s for S3 at an endpoint that accepts and never replies,
# over 200 s for gs:// on a machine without network (pyarrow 25), while the study looked started.
PROBE_DEADLINE_S = 30.0


@dataclass(frozen=True)
class Location:
    """A file or folder of the study's storage: a local absolute path or a URI (`s3://bucket/prefix/…`)."""

    uri: str

    @classmethod
    def of(cls, text: str | Path) -> "Location":
        text = str(text)
        return cls(text.rstrip("/") if is_uri(text) else str(Path(text).expanduser().resolve()))

    @property
    def is_local(self) -> bool:
        return not is_uri(self.uri)

    @property
    def name(self) -> str:
        return posixpath.basename(self.uri.rstrip("/"))

    @property
    def parent(self) -> "Location":
        scheme, sep, rest = self.uri.partition("://")
        return Location(f"{scheme}{sep}{posixpath.dirname(rest)}" if sep else str(Path(self.uri).parent))

    def __truediv__(self, part: str) -> "Location":
        return Location(f"{self.uri.rstrip('/')}/{part}" if not self.is_local else str(Path(self.uri) / part))

    def __str__(self) -> str:
        return self.uri

    def _fs(self) -> tuple[pafs.FileSystem, str]:
        return pafs.FileSystem.from_uri(self.uri)

    def exists(self) -> bool:
        fs, path = self._fs()
        return fs.get_file_info(path).type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        fs, path = self._fs()
        return fs.get_file_info(path).type == pafs.FileType.File

    def read_text(self) -> str:
        fs, path = self._fs()
        with fs.open_input_stream(path) as stream:
            return stream.read().decode()

    def write_text(self, text: str) -> None:
        fs, path = self._fs()
        fs.create_dir(posixpath.dirname(path), recursive=True)
        with fs.open_output_stream(path) as stream:
            stream.write(text.encode())

    def children(self) -> list["Location"]:
        """The folders and files directly in this folder (none if it does not exist)."""
        fs, path = self._fs()
        found = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        return sorted((self / posixpath.basename(info.path) for info in found), key=lambda loc: loc.uri)

    @contextmanager
    def local_copy(self) -> Iterator[Path]:
        """This file or folder on the local disk: itself when local, else downloaded into a temporary folder."""
        if self.is_local:
            yield Path(self.uri)
            return
        with tempfile.TemporaryDirectory() as tmp:
            fs, path = self._fs()
            target = Path(tmp) / self.name
            pafs.copy_files(path, str(target), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
            yield target

    def unwritable(self) -> str | None:
        """Why nothing can be written here (None if a probe file can be written and deleted within
        `PROBE_DEADLINE_S`)."""
        if self.is_local:
            return unwritable(Path(self.uri))
        outcome: list[str | None] = []
        # a thread, because pyarrow's filesystems take no deadline; one left waiting on a silent store ends with
        # the process (daemon), having written nothing the study reads
        probe = threading.Thread(target=lambda: outcome.append(self._probe_write()), name="storage-probe",
                                 daemon=True)
        probe.start()
        probe.join(PROBE_DEADLINE_S)
        return outcome[0] if outcome else (f"no answer within {PROBE_DEADLINE_S:g} s: check the network, the "
                                           "endpoint and the credentials")

    def _probe_write(self) -> str | None:
        """Write and delete a probe file here: why that failed, or None."""
        probe = self / f".write-probe-{uuid.uuid4().hex}"
        try:
            probe.write_text("probe")
            fs, path = probe._fs()
            fs.delete_file(path)
        except Exception as err:  # pyarrow raises OSError subclasses and ArrowInvalid for bad URIs
            return " ".join(str(err).split()) or type(err).__name__
        return None
