"""`StudyRecord`: what identifies one study across its runs and resumes, saved as `<study>/study.json`.

The study's folder is a `Location` of its storage (a local folder or an object-store URI), so a study
in a bucket is found and resumed from any machine.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from study.storage import Location

STUDY_FILE = "study.json"


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
        return self.storage / "mlartifacts"
