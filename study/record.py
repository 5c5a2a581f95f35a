"""`StudyRecord`: what identifies one study across its runs and resumes, saved as `<study>/study.json`.

The study's folder is a `Location` of its storage (a local folder or an object-store URI), so a study
in a bucket is found and resumed from any machine.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from study.errors import InputError
from study.storage import Location
from trainables.cache import cache_dir
from trainables.records import ARTIFACTS_FOLDER

STUDY_FILE = "study.json"
CLAIM_FILE = "claimed"  # a new study's folder in object storage is taken (`StudyRecord.claim`)
_HELD: dict[Path, TextIO] = {}  # this process's study locks (`StudyRecord.hold`), by path


def this_process() -> str:
    """`pid N on HOST`: who claimed or holds a study."""
    return f"pid {os.getpid()} on {socket.gethostname()}"


def release_held() -> None:
    """Give up the study locks this process holds (`StudyRecord.hold`): its study is over."""
    while _HELD:
        _HELD.popitem()[1].close()


@dataclass
class StudyRecord:
    space: str
    overrides: dict[str, Any]  # what the command line set (trial settings, budget, variants), replayed on --resume
    seed: int
    tracking_uri: str
    experiment: str
    study_dir: Location
    parent_run_id: str | None = None  # the study's MLflow run, once created

    @classmethod
    def new(cls, storage: Location, space: str, **fields: Any) -> StudyRecord:
        """A record for a new study of `space`, in a fresh time-stamped folder under `storage`."""
        return cls(space=space, study_dir=storage / f"{space}-{time.strftime('%Y%m%d-%H%M%S')}", **fields)

    @classmethod
    def latest(cls, storage: Location, space: str) -> StudyRecord | None:
        """The newest saved study of `space` under `storage`, or None."""
        found = [d for d in storage.children() if d.name.startswith(f"{space}-") and (d / STUDY_FILE).is_file()]
        return cls.load(found[-1]) if found else None

    @classmethod
    def load(cls, study_dir: Location) -> StudyRecord:
        return cls(**json.loads((study_dir / STUDY_FILE).read_text()), study_dir=study_dir)

    def claim(self) -> None:
        """Make the new study's folder its own before anything is written there: a study of the same space started
        in the same second under the same storage (a script starting several) takes `<name>-2`, `-3`, …. A local
        folder is claimed atomically (mkdir); in object storage, by the first `CLAIM_FILE` written there."""
        base = self.study_dir
        for n in itertools.count(2):
            if self.study_dir.is_local:
                try:
                    Path(self.study_dir.uri).mkdir(parents=True)
                    return
                except FileExistsError:
                    pass
            elif not any((self.study_dir / name).exists() for name in (CLAIM_FILE, STUDY_FILE)):
                (self.study_dir / CLAIM_FILE).write_text(f"{this_process()}\n")
                return
            self.study_dir = base.parent / f"{base.name}-{n}"

    def hold(self) -> None:
        """Lock the study for this process until `release_held` or its exit (flock: the system frees it however the
        process ends): InputError if another process on this machine runs it (`_lock_path`)."""
        path = self._lock_path()
        if path in _HELD:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path, "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise InputError(f"study {self.name} is running ({holder}); wait for it to end, or stop it (Ctrl+C, "
                             "or kill PID) before --resume") from None
        lock.truncate(0)
        lock.write(f"{this_process()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        lock.flush()
        _HELD[path] = lock

    def _lock_path(self) -> Path:
        """Under the cache folder, named after the study's path or URI: a refused --resume writes nothing in the
        study, and a study in a bucket has a lock too."""
        return cache_dir() / "locks" / f"{hashlib.sha256(self.study_dir.uri.encode()).hexdigest()[:16]}.lock"

    def save(self) -> None:
        saved = {k: v for k, v in asdict(self).items() if k != "study_dir"}  # the folder is where it lies
        (self.study_dir / STUDY_FILE).write_text(json.dumps(saved, indent=1))

    @property
    def name(self) -> str:
        return self.study_dir.name

    @property
    def storage(self) -> Location:
        return self.study_dir.parent

    @property
    def train_dir(self) -> Location:
        """Ray Train's folder for multi-worker trials (`<trial id>/epoch_NNNN` checkpoints), and each
        finished trial's mark."""
        return self.study_dir / "train"

    @property
    def report_dir(self) -> Path:
        """The report's files on this machine: in the study's folder, or for a study in object storage
        under `reports-out/` here (they are on the study's MLflow run either way)."""
        return Path(self.study_dir.uri) / "report" if self.study_dir.is_local else Path("reports-out") / self.name

    @property
    def error_log(self) -> Location:
        return self.study_dir / "error.log"

    @property
    def artifact_root(self) -> Location:
        """MLflow artifacts of a study store beside the studies (one per experiment under it)."""
        return self.storage / ARTIFACTS_FOLDER
