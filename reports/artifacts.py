"""A run's artifacts as the reports read and write them, also in a study folder moved or copied since it ran (fetched
from a cluster, opened on a laptop).

MLflow records a run's artifact folder as an absolute path. Opened from its new place, a local store's runs listed no
files: the demo's report said "no run has trust-ratio telemetry" and left out every Optuna view, and logging the
report re-created the old folder. Such a run's files are found where a study puts them, beside the SQLite database
(`trainables.records.ARTIFACTS_FOLDER`); every other store (a tracking server, object storage) is read as MLflow reads
it.
"""

from __future__ import annotations

from pathlib import Path

from mlflow.store.artifact.artifact_repo import ArtifactRepository
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
from mlflow.tracking import MlflowClient
from mlflow.utils.file_utils import local_file_uri_to_path

from trainables.records import ARTIFACTS_FOLDER, sqlite_file


def moved_folder(recorded: Path, database: Path) -> Path | None:
    """Where a run's artifact folder recorded at `recorded` is now: beside `database`, when the artifact root it was
    recorded under is gone and one stands there (the run's own folder may not exist yet); else None."""
    parts = recorded.parts
    if ARTIFACTS_FOLDER not in parts:
        return None
    root = len(parts) - 1 - parts[::-1].index(ARTIFACTS_FOLDER)
    if Path(*parts[:root + 1]).exists() or not (database.parent / ARTIFACTS_FOLDER).is_dir():
        return None
    return database.parent.joinpath(*parts[root:])


def _moved_repository(client: MlflowClient, run_id: str) -> ArtifactRepository | None:
    """The run's artifacts beside its local store's database, when the store moved away from the folder MLflow
    recorded (`moved_folder`); else None."""
    database = sqlite_file(client.tracking_uri)
    if database is None:  # a server's or object storage's runs: no extra request to find out
        return None
    uri = client.get_run(run_id).info.artifact_uri
    if not uri.startswith("file:"):
        return None
    moved = moved_folder(Path(local_file_uri_to_path(uri)), database.resolve())
    return None if moved is None else LocalArtifactRepository(moved.as_uri())


def listed(client: MlflowClient, run_id: str, folder: str | None = None) -> set[str]:
    """The paths of the run's artifacts (in `folder`), as `MlflowClient.list_artifacts` gives them."""
    moved = _moved_repository(client, run_id)
    found = moved.list_artifacts(folder) if moved else client.list_artifacts(run_id, folder)
    return {f.path for f in found}


def download(client: MlflowClient, run_id: str, path: str, into: str) -> str:
    """The run's artifact `path` copied into the folder `into`; its local path."""
    moved = _moved_repository(client, run_id)
    return moved.download_artifacts(path, into) if moved else client.download_artifacts(run_id, path, into)


def log_folder(client: MlflowClient, run_id: str, local: str, path: str) -> None:
    """Every file under `local` as the run's artifacts under `path`."""
    moved = _moved_repository(client, run_id)
    if moved:
        moved.log_artifacts(local, path)
    else:
        client.log_artifacts(run_id, local, path)
