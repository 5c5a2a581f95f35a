"""The study's MLflow store: where it is (a local SQLite file, a team's server), whether it answers, the
experiment and the study's parent run (with the code's git commit and library versions), and how to
review it in MLflow's UI.

MLflow itself (~1.5 s to import here) is imported where a store is used, not with this module: a study's checks
name the store without it, and `study.run.start_local_ray_beside` imports it just before Ray starts and opens the
store while Ray starts."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from study.errors import InputError
from study.storage import Location
from trainables.cache import cache_dir
from trainables.records import SQLITE_PREFIX, STUDY_PATH_TAG, deleted_experiment, sqlite_file

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


def user_data_dir() -> Path:
    """This user's data folder for the platform (`$XDG_DATA_HOME/layerwise-study`, default ~/.local/share/…)."""
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "layerwise-study"


def default_tracking_uri(storage: Location) -> str:
    """MLflow's default store: `mlflow.db` in a local storage folder; for a storage URI, a SQLite file on
    this machine (the same for every study in object storage, so any of them is found from any folder)."""
    folder = Path(storage.uri) if storage.is_local else user_data_dir()
    return f"{SQLITE_PREFIX}{(folder / 'mlflow.db').resolve()}"


def is_server(uri: str) -> bool:
    """Whether `uri` is a tracking server (whose own artifact store holds every run's files)."""
    return uri.startswith(("http://", "https://"))


# MLflow 3.17's UI takes its view (GenAI or model training) from the URL, else from the browser's last
# choice (GenAI at first), whatever the experiment's kind tag says: a link naming the view opens a study's
# experiment on its runs (and the browser remembers the choice).
MODEL_TRAINING_VIEW = "workflowType=machine_learning"
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default


def experiment_page(base_url: str, exp_id: str) -> str:
    """The MLflow UI page of an experiment's runs."""
    return f"{base_url.rstrip('/')}/#/experiments/{exp_id}?{MODEL_TRAINING_VIEW}"


def review_hint(uri: str, exp_id: str) -> str:
    """How to open the study's records: the server's page, or `mlflow ui` over a local store and its page."""
    if is_server(uri):
        return f"open {experiment_page(uri, exp_id)}"
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1, then open {experiment_page(LOCAL_UI, exp_id)}"


SERVER_CHECK_TIMEOUT_S = 10  # MLflow's own client retries an unreachable server for minutes


def _reach_server(uri: str) -> None:
    """Connect to an http(s) tracking server's port (ValueError naming the URI if nothing answers)."""
    parsed = urllib.parse.urlsplit(uri)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname or "127.0.0.1", port), timeout=SERVER_CHECK_TIMEOUT_S).close()
    except OSError as err:
        raise ValueError(f"--tracking-uri: cannot reach the MLflow tracking server at {uri!r} "
                         f"({err.strerror or err})") from None


def check_tracking_uri(uri: str) -> MlflowClient:
    """A client for `uri`, or ValueError if the store cannot be reached (within seconds, not MLflow's retries).
    A new SQLite store starts as a copy of this MLflow version's empty one (`EmptyStore`)."""
    server = is_server(uri)
    if server:
        _reach_server(uri)
    fast = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(SERVER_CHECK_TIMEOUT_S)}
    saved = {k: os.environ.get(k) for k in fast}
    os.environ.update(fast if server else {})
    try:
        return _open_store(uri)
    except Exception as err:  # MLflow raises many types for unusable URIs
        raise ValueError(f"--tracking-uri: cannot use MLflow store {uri!r}: {str(err).splitlines()[0]}") from None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _open_store(uri: str) -> MlflowClient:
    """A client for `uri` that has read the store; a new SQLite file starts as the kept empty store's copy when
    there is one, else MLflow creates it (its migrations) and it is kept (`EmptyStore`)."""
    from mlflow.tracking import MlflowClient

    database = sqlite_file(uri)
    empty = EmptyStore.current() if database is not None and not database.exists() else None
    copied = empty is not None and empty.copy_to(database)
    client = MlflowClient(tracking_uri=uri)
    client.search_experiments(max_results=1)
    if empty is not None and not copied:
        empty.keep(database)
    return client


@dataclass(frozen=True)
class EmptyStore:
    """This MLflow version's empty SQLite store, kept in the project's cache: a new store starts as its copy.

    Not an MLflow feature: MLflow creates a SQLite store by running Alembic's migrations, 0.9 s of CPU here
    (`check_tracking_uri` on a new file 0.93 s, on a copy 0.03 s) — in a study's start, beside Ray's. A copy of the
    file MLflow itself created, at the same version, is the same schema (MLflow checks its revision on every
    open). It is kept without the Default experiment, which MLflow adds on opening a store that lacks it, with
    this store's own artifact location and time. On 2 cores, the 4-trial short study in a new storage folder
    reached its first trial in a median 9.35 s with the copy against 10.0 s without (11 rounds interleaved)."""

    path: Path

    @classmethod
    def current(cls) -> EmptyStore:
        import mlflow

        return cls(cache_dir() / f"mlflow-{mlflow.__version__}-empty.db")

    def copy_to(self, database: Path) -> bool:
        """Copy the kept store to `database` (its folder made); False when none is kept, or SQLite finds it damaged."""
        if not self._sound():
            return False
        try:
            database.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.path, database)
            return True
        except OSError:
            database.unlink(missing_ok=True)
            return False

    def _sound(self) -> bool:
        """Whether the kept store exists, passes SQLite's quick check and names its schema's revision."""
        if not self.path.is_file():
            return False
        try:
            with contextlib.closing(sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True)) as db:
                return (db.execute("PRAGMA quick_check").fetchone() == ("ok",)
                        and len(db.execute("SELECT version_num FROM alembic_version").fetchall()) == 1)
        except sqlite3.Error:
            return False

    def keep(self, database: Path) -> None:
        """Keep the new store `database`, still empty, less its Default experiment; best effort: a cache that
        cannot be written only costs the next new store its migrations."""
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.closing(sqlite3.connect(database)) as source, \
                    contextlib.closing(sqlite3.connect(tmp)) as target:
                source.backup(target)  # SQLite's own copy: consistent whatever the journal holds
                with target:
                    target.execute("DELETE FROM experiments")
            os.replace(tmp, self.path)  # atomic: a concurrent study never copies a half-written store
        except (OSError, sqlite3.Error):
            tmp.unlink(missing_ok=True)


# The experiment's kind for MLflow UIs that read it (3.17.2's OSS UI decides its view from the URL or the
# browser's last choice instead: see `experiment_page`).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(client: MlflowClient, name: str, artifact_root: Location) -> str:
    """The study's experiment (created if new), tagged to open on its runs in the MLflow UI.

    Its artifacts go beside the study's records (`artifact_root`), except with a tracking server, whose
    own artifact store decides (`mlflow-artifacts:/…`): every file then goes up through the server, where
    a teammate can read it.
    """
    found = client.get_experiment_by_name(name)
    if found is not None and found.lifecycle_stage == "deleted":  # MLflow refuses runs in it, mid-study
        raise InputError(f"--experiment: {deleted_experiment(name, found.experiment_id, client.tracking_uri)}, or "
                         "pass another --experiment")
    if found is None:
        location = None if is_server(client.tracking_uri) else (
            Path(artifact_root.uri).as_uri() if artifact_root.is_local else artifact_root.uri)
        return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
    for key, value in EXPERIMENT_KIND.items():
        if found.tags.get(key) != value:
            client.set_experiment_tag(found.experiment_id, key, value)
    return found.experiment_id


def git_commit() -> str:
    """The checkout's commit, `+dirty` when it has uncommitted changes to tracked files ("unknown" outside git)."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=here)
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                 text=True, timeout=5, cwd=here)
    except OSError:
        return "unknown"
    commit = head.stdout.strip()
    return (commit + "+dirty" * bool(changed.stdout.strip())) if commit else "unknown"


def library_versions() -> dict[str, str]:
    import mlflow
    import optuna
    import ray
    import torch

    return {"ray_version": ray.__version__, "optuna_version": optuna.__version__, "torch_version": torch.__version__,
            "mlflow_version": mlflow.__version__, "python_version": sys.version.split()[0]}


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)


def start_parent_run(client: MlflowClient, exp_id: str, study_path: str, definition: dict[str, Any],
                     tags: dict[str, str]) -> str:
    """Create the study's parent run (or reopen it on --resume); returns its id."""
    from mlflow.entities import Param

    found = client.search_runs([exp_id], f"tags.{STUDY_PATH_TAG} = '{study_path}'", max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    run = client.create_run(exp_id, run_name=Path(study_path).name,
                            tags={STUDY_PATH_TAG: study_path, "git_commit": git_commit(), **library_versions(), **tags})
    params: dict[str, str] = {}
    _flatten("", {k: v for k, v in definition.items() if k != "variants"}, params)
    params["variants"] = ",".join(definition["variants"])
    client.log_batch(run.info.run_id, params=[Param(k[:250], v[:6000]) for k, v in params.items()])
    client.log_dict(run.info.run_id, definition, "space.json")
    return run.info.run_id


def dataset_input(name: str, data, source: str) -> dict[str, str]:
    """The study's data (a decoded `Dataset` or a streamed `Catalog`) as MLflow records a run's dataset — name,
    digest, source (its folder or URI) and profile, in the UI's Datasets column — in plain strings (the recorder
    is pickled with the Tuner)."""
    scheme = source.split("://", 1)[0] if "://" in source else "local"
    profile = {"train_images": len(data.train), "test_images": len(data.test), "classes": data.num_classes,
               "image_size": data.image_size}
    return {"name": name, "digest": data.digest, "source_type": scheme,
            "source": json.dumps({"uri": source}), "profile": json.dumps(profile)}


def log_dataset(client: MlflowClient, run_id: str, dataset: dict[str, str] | None) -> None:
    """`dataset` (`dataset_input`) as the run's training data."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    if dataset:
        client.log_inputs(run_id, [DatasetInput(Dataset(**dataset), [InputTag(MLFLOW_DATASET_CONTEXT, "training")])])
