"""Tune's saved state of a study, checked before `--resume` hands it to `Tuner.restore`.

Tune writes these files in place: a dump into the driver's staging folder (`<Ray temp dir>/session_*/artifacts/
*/<study>/driver_artifacts/`), then a copy into the storage. A study killed mid-write leaves one of the two cut
short, and on a cut-short file Tune's restore logs the error and starts the study over ("Restarting experiment."):
every finished trial runs again beside its MLflow run, and the report then fails (seen on fe88182: a demo study
with its newest `experiment_state-*.json` cut to 30,000 bytes). The staging copy and the storage's are never
cut short both (one is written before the other), so a study killed on a machine that kept its Ray temp dir
(the process killed, not the node) resumes from the staging copy; otherwise the resume is one `error:`.

Local storage only: an object store receives each file as one upload, whole or not at all.
"""

from __future__ import annotations

import io
import json
import os
import pickletools
import shutil
from fnmatch import fnmatch
from pathlib import Path

from study.errors import InputError
from study.storage import Location

# what Tune's restore reads, the newest file (greatest name: a session's start time) of each pattern
# (`TuneController.CKPT_FILE_TMPL`, `SearchGenerator.CKPT_FILE_TMPL`, `Searcher.CKPT_FILE_TMPL`)
STATE_PATTERNS = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl")


def reached_tune(study_dir: Location) -> bool:
    """Whether Tune saved the study's state at least once (`experiment_state-*.json`, at the end of its first step,
    before any trial runs). A study stopped before that — after its parent run opened, before the fit — has none,
    and `Tuner.restore` of it failed ("Failed to open local file …/tuner.pkl"): it is started anew instead."""
    return any(fnmatch(child.name, STATE_PATTERNS[0]) for child in study_dir.children())


def why_unreadable(path: Path) -> str | None:
    """Why Tune could not load `path` (cut short, empty), or None; a pickle's opcodes are walked, never run."""
    data = path.read_bytes()
    try:
        if path.name.startswith("experiment_state-"):  # JSON; the searcher's files are cloudpickles
            json.loads(data)
        else:
            for _ in pickletools.genops(io.BytesIO(data)):  # raises unless the pickle reaches its STOP
                pass
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return f"{len(data):,} bytes: {err}"
    return None


def session_of(path: Path) -> str:
    """The start of the Tune session that wrote a state file (`…-2026-12-05_13-39-42.json`), shared by its files."""
    return path.stem[-len("YYYY-mm-dd_HH-MM-SS"):]


def ray_temp_dir() -> Path:
    """Ray's temp dir on this machine, as Ray picks it (`ray._common.utils.get_default_ray_temp_dir`), without
    importing Ray before its start."""
    system = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    return Path(system) / "ray"


def staging_copy(study_dir: Path, name: str) -> Path | None:
    """The newest complete copy of the study's state file `name` in a Ray session's staging folder here."""
    found = ray_temp_dir().glob(f"session_*/artifacts/*/{study_dir.name}/driver_artifacts/{name}")
    readable = [p for p in {p.resolve() for p in found} if why_unreadable(p) is None]  # session_latest: a link
    return max(readable, key=lambda p: p.stat().st_mtime, default=None)


def repair_tune_state(study_dir: Path) -> list[str]:
    """Check the saved state `--resume` restores; replace a cut-short file by its staging copy (what was done, as
    lines to print), or raise InputError naming the file when there is none."""
    done = []
    for pattern in STATE_PATTERNS:
        saved = sorted(study_dir.glob(pattern))  # one file per session, named by its start: the newest last
        why = saved and why_unreadable(saved[-1])
        if not why:
            continue
        newest = saved[-1]
        copy = staging_copy(study_dir, newest.name)
        if copy is None:
            instead = (f"move that session's files (*-{session_of(newest)}.*) aside to resume from the session "
                       f"before ({session_of(saved[-2])}; the trials run since then run again)" if len(saved) > 1
                       else "start the study anew (without --resume)")
            raise InputError(f"--resume: Tune's saved state {newest} is cut short ({why}): the study was stopped "
                             f"while writing it, and Ray's staging folder here holds no complete copy; Tune would "
                             f"start the study over, running its finished trials again. To go on, {instead}")
        temporary = newest.with_name(f".{newest.name}.recovered")
        shutil.copyfile(copy, temporary)
        os.replace(temporary, newest)  # whole or not at all, unlike Tune's own copy
        done.append(f"resume: {newest.name} was cut short ({why}); restored from Ray's staging copy {copy}")
    return done
