"""Read a study's MLflow records into two tables: one row per trial, one row per (trial, epoch).

Only MLflow is read (through `MlflowClient`): a trial run is a run with a `trial_id` tag nested under
a study's parent run (as `study.tracking` writes them); its params are the trial's full settings.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from reports import artifacts
from trainables.records import (ERROR_TAG, LR_EFFECTIVE_KEY, PARENT_TAG, STAGE_TAG, STATUS_TAG, STUDY_PATH_TAG,
                                TELEMETRY_FILE, TRIAL_ID_TAG, VARIANT_TAG, Stage, TrialStatus, deleted_experiment)

METRIC = "test_top1"  # what a table cell reports
VAL_METRIC = "val_top1"  # what the search selected on
BASELINE_NAMES = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "adagrad": "Adagrad", "rmsprop": "RMSprop"}
# Rows in the TVLARS paper's order, then the other layer-wise methods, then baselines.
ROW_ORDER = ("LARS + warm-up", "LARS", "LAMB + warm-up", "LAMB", "TVLARS", "LAMBC + warm-up", "LAMBC",
             "LARC + warm-up", "LARC", "CLARS + warm-up", "CLARS")


class ReportError(ValueError):
    """Nothing to report on (unknown experiment, no trials, unknown study)."""


@dataclass
class StudyData:
    trials: pd.DataFrame  # one row per trial run
    epochs: pd.DataFrame  # one row per (trial, epoch): every metric logged at that epoch
    parents: list[Run]  # the studies' parent runs, oldest first


def _value(text: str | None) -> object:
    """An MLflow param string back to a number / None where it is one."""
    if text is None or text == "None":
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number


def row_label(params: dict[str, object]) -> str:
    """The table row of a trial: the optimizer, with ' + warm-up' when its schedule warms up."""
    name = str(params.get("optimizer", "?"))
    label = BASELINE_NAMES.get(name, name.upper())
    warmup = params.get("scheduler") == "warmup_cosine" and float(params.get("warmup_epochs") or 0) > 0
    return f"{label} + warm-up" if warmup and name != "tvlars" else label


def row_rank(label: str) -> tuple[int, str]:
    return (ROW_ORDER.index(label), "") if label in ROW_ORDER else (len(ROW_ORDER), label)


def find_parents(client: MlflowClient, experiment: str, study: str | None = None) -> tuple[str, list[Run]]:
    """The experiment's id and its study parent runs (one study when `study` names a run id or run name)."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ReportError(f"--experiment: no MLflow experiment {experiment!r}; this store has: {', '.join(names)}")
    if exp.lifecycle_stage == "deleted":
        raise ReportError(f"--experiment: {deleted_experiment(experiment, exp.experiment_id, client.tracking_uri)}")
    runs = client.search_runs([exp.experiment_id], f"tags.{STUDY_PATH_TAG} != ''", max_results=10_000,
                              order_by=["attributes.start_time ASC"])
    if study is not None:
        runs = [r for r in runs if study in (r.info.run_id, r.info.run_name)]
        if not runs:
            raise ReportError(f"--study: no study run with id or name {study!r} in experiment {experiment!r}")
    if not runs:
        raise ReportError(f"experiment {experiment!r} has no study runs (made by `python -m study.run`)")
    return exp.experiment_id, runs


def collect(client: MlflowClient, experiment: str, study: str | None = None) -> StudyData:
    exp_id, parents = find_parents(client, experiment, study)
    trials, epochs = [], []
    for parent in parents:
        runs = client.search_runs([exp_id], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'", max_results=10_000)
        for run in runs:
            if TRIAL_ID_TAG not in run.data.tags:
                continue
            trial, history = _trial(client, run, parent)
            trials.append(trial)
            epochs += history
    if not trials:
        raise ReportError(f"experiment {experiment!r} has study runs but no trial runs yet")
    # trials that logged no epoch or no evaluation (errored before): still the columns readers use
    epochs_frame = pd.DataFrame(epochs, columns=None if epochs else ["run_id", TRIAL_ID_TAG, "label", "epoch"])
    for column in (METRIC, VAL_METRIC):
        if column not in epochs_frame:
            epochs_frame[column] = math.nan
    return StudyData(pd.DataFrame(trials), epochs_frame, parents)


def _trial(client: MlflowClient, run: Run, parent: Run) -> tuple[dict, list[dict]]:
    params = {k: _value(v) for k, v in run.data.params.items()}
    per_epoch: dict[int, dict[str, float]] = {}
    for key in run.data.metrics:
        for m in client.get_metric_history(run.info.run_id, key):
            if m.step >= 1:
                per_epoch.setdefault(int(m.step), {})[key] = m.value
    scores, val = _scores(per_epoch, METRIC), _scores(per_epoch, VAL_METRIC)
    best_epoch = chosen_epoch(scores, val)
    resources = parent.data.params
    end = run.info.end_time or run.info.start_time
    lr = params.get(LR_EFFECTIVE_KEY, params.get("lr"))
    trial = {
        "run_id": run.info.run_id, "run_name": run.info.run_name, TRIAL_ID_TAG: run.data.tags[TRIAL_ID_TAG],
        "study": parent.info.run_name, "study_run_id": parent.info.run_id,
        "variant": run.data.tags.get(VARIANT_TAG, ""), "status": run.data.tags.get(STATUS_TAG, TrialStatus.RUNNING),
        "stage": run.data.tags.get(STAGE_TAG, Stage.SEARCH), "error": run.data.tags.get(ERROR_TAG, ""),
        "label": row_label(params), "task": params.get("task", "clf"), "dataset": params.get("dataset", "?"),
        "model": params.get("model", "?"), "epochs": int(params.get("epochs") or 0),
        "batch_size": int(params.get("batch_size") or 0), "lr": float(lr) if lr is not None else math.nan,
        "seed": params.get("seed"), "epochs_run": max(per_epoch, default=0),
        "best": dict(scores).get(best_epoch, math.nan), "final": scores[-1][1] if scores else math.nan,
        "best_epoch": best_epoch,
        "val_best": max((v for _, v in val), default=math.nan), "val_final": val[-1][1] if val else math.nan,
        "wall_seconds": (end - run.info.start_time) / 1000, "start_time": run.info.start_time, "end_time": end,
        "workers": int(float(resources.get("resources.workers", 1))),
        "cpus_per_worker": float(resources.get("resources.cpus_per_worker", 1)),
        "gpus_per_worker": float(resources.get("resources.gpus_per_worker", 0)),
        "params": params,
    }
    history = [{"run_id": run.info.run_id, TRIAL_ID_TAG: trial[TRIAL_ID_TAG], "label": trial["label"], "epoch": e, **v}
               for e, v in sorted(per_epoch.items())]
    return trial, history


def chosen_epoch(test: list[tuple[int, float]], val: list[tuple[int, float]]) -> int:
    """A trial's "best" epoch: the one with the best validation top-1 among those that logged a test top-1
    (the test set chooses nothing); the best test epoch only for runs that logged no validation split."""
    tested = dict(test)
    by_val = [(v, e) for e, v in val if e in tested]
    if by_val:
        return max(by_val, key=lambda ve: (ve[0], -ve[1]))[1]  # the earliest of equally good epochs
    return max(test, key=lambda s: s[1])[0] if test else 0


def _scores(per_epoch: dict[int, dict[str, float]], metric: str) -> list[tuple[int, float]]:
    """(epoch, value) of every epoch that logged a finite `metric`, in order."""
    return [(e, v[metric]) for e, v in sorted(per_epoch.items()) if metric in v and math.isfinite(v[metric])]


def telemetry(client: MlflowClient, run_id: str) -> pd.DataFrame | None:
    """The trial's trust-ratio telemetry (step, layer, rho, w_norm, g_norm), or None if it has none."""
    if TELEMETRY_FILE not in artifacts.listed(client, run_id):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = artifacts.download(client, run_id, TELEMETRY_FILE, tmp)
        return pq.read_table(Path(path)).to_pandas()
