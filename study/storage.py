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
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow.fs as pafs


def is_uri(text: str) -> bool:
    return "://" in text


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
        """Why nothing can be written here (None if a probe file can be written and deleted)."""
        if self.is_local:
            from trainables.folders import unwritable

            return unwritable(Path(self.uri))
        probe = self / f".write-probe-{uuid.uuid4().hex}"
        try:
            probe.write_text("probe")
            fs, path = probe._fs()
            fs.delete_file(path)
        except Exception as err:  # pyarrow raises OSError subclasses and ArrowInvalid for bad URIs
            return " ".join(str(err).split()) or type(err).__name__
        return None
