"""A study's Optuna search, persisted: one Optuna study per platform study (named as the study), in an Optuna
`JournalStorage` file, the variant a parameter of every trial (its params are `<variant>/<key>`, its user attr
`variant`). `optuna-dashboard <file>` opens it; `--resume` continues it.

The file is written on the driver: in the study's folder when the storage is local; for a study in object
storage (`s3://…`) under the driver's temp folder, copied beside the searcher's state at every experiment
checkpoint (Tune uploads both to the study's folder) and fetched back before a resume.

A journal file rather than SQLite: appends only, so a copy taken between two writes is a valid study, and
Optuna and optuna-dashboard both open it with no database server.
"""

from __future__ import annotations

import shlex
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from study.record import StudyRecord
from study.storage import Location
from trainables.records import OPTUNA_JOURNAL_ARTIFACT, TRANSFER_TAG

JOURNAL_FILE = PurePosixPath(OPTUNA_JOURNAL_ARTIFACT).name
TRIAL_NAME_ATTR = "trial_name"  # an Optuna trial's user attr: the study's name of its trial (`<variant>-<n>`)
TRANSFER_ATTR = TRANSFER_TAG  # an Optuna trial's user attr: which point of the batch-size transfer it is
TRANSFER_POINTS = ("fit", "low", "high")  # its values (and the trial run's tag's): the prediction, the interval's ends
ORPHAN_ATTR = "orphaned"  # an Optuna trial's user attr: asked before an interruption, never run (then FAIL)


@dataclass(frozen=True)
class SearchJournal:
    """Where a study's Optuna journal lives: its study name and the study's folder."""

    study_name: str
    study_dir: Location

    @classmethod
    def of(cls, record: StudyRecord) -> SearchJournal:
        """A study's journal."""
        return cls(record.name, record.study_dir)

    @property
    def live(self) -> Path:
        """The file the driver writes."""
        if self.study_dir.is_local:
            return Path(self.study_dir.uri) / JOURNAL_FILE
        return Path(tempfile.gettempdir()) / "layerwise-optuna" / self.study_name / JOURNAL_FILE

    @property
    def stored(self) -> Location:
        """The journal in the study's folder (the live file itself for a local study)."""
        return self.study_dir / JOURNAL_FILE

    def storage(self) -> JournalStorage:
        self.live.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(self.live)))

    def stage(self, checkpoint_dir: Path) -> None:
        """A copy beside the searcher's state in Tune's driver staging folder, which Tune uploads (object storage only)."""
        if not self.study_dir.is_local and self.live.is_file():
            shutil.copyfile(self.live, checkpoint_dir / JOURNAL_FILE)

    def fetch(self) -> None:
        """Before a resume: the study's copy from object storage onto the driver (nothing to do for a local study)."""
        if self.study_dir.is_local or not self.stored.is_file():
            return
        self.live.parent.mkdir(parents=True, exist_ok=True)
        with self.stored.local_copy() as copy:
            shutil.copyfile(copy, self.live)

    def dashboard_command(self) -> str:
        return f"optuna-dashboard {shlex.quote(str(self.live))}"

    def load(self) -> optuna.Study:
        return optuna.load_study(study_name=self.study_name, storage=self.storage())
