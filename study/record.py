"""`StudyRecord`: what identifies one study across its runs and resumes, saved as `<study>/study.json`."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

STUDY_FILE = "study.json"


@dataclass
class StudyRecord:
    space: str
    overrides: dict[str, Any]  # the plan's fixed trial settings (from --set and flags), replayed on --resume
    seed: int
    tracking_uri: str
    experiment: str
    study_dir: Path
    parent_run_id: str | None = None  # the study's MLflow run, once created

    @classmethod
    def new(cls, storage: Path, space: str, **fields: Any) -> StudyRecord:
        """A record for a new study of `space`, in a fresh time-stamped folder under `storage`."""
        return cls(space=space, study_dir=storage / f"{space}-{time.strftime('%Y%m%d-%H%M%S')}", **fields)

    @classmethod
    def latest(cls, storage: Path, space: str) -> StudyRecord | None:
        """The newest saved study of `space` under `storage`, or None."""
        found = sorted(p for p in storage.glob(f"{space}-*") if (p / STUDY_FILE).is_file())
        return cls.load(found[-1]) if found else None

    @classmethod
    def load(cls, study_dir: Path) -> StudyRecord:
        return cls(**json.loads((study_dir / STUDY_FILE).read_text()), study_dir=study_dir)

    def save(self) -> None:
        self.study_dir.mkdir(parents=True, exist_ok=True)
        saved = {k: v for k, v in asdict(self).items() if k != "study_dir"}  # the folder is where it lies
        (self.study_dir / STUDY_FILE).write_text(json.dumps(saved, indent=1))

    @property
    def name(self) -> str:
        return self.study_dir.name

    @property
    def storage(self) -> Path:
        return self.study_dir.parent

    @property
    def train_dir(self) -> Path:
        """Ray Train's folder for multi-worker trials (`<trial id>/epoch_NNNN` checkpoints)."""
        return self.study_dir / "train"

    @property
    def report_dir(self) -> Path:
        return self.study_dir / "report"

    @property
    def error_log(self) -> Path:
        return self.study_dir / "error.log"

    @property
    def artifact_root(self) -> Path:
        """MLflow artifacts of a study store beside the studies (one per experiment under it)."""
        return self.storage / "mlartifacts"
