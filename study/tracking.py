"""MLflow records of a study's trials: one nested run per trial under the study's parent run
(`study.mlflow_store` makes that run; `study.summary` reads the closing numbers).

Everything is written from the Tune driver process by a `tune.Callback` through `MlflowClient`, so
concurrent trials never write to the store at the same time. Epochs are logged idempotently: the
`epoch` metric's history in MLflow is the ledger, and gaps (e.g. epochs reported while the study
driver was down) are filled from the trial's checkpoint `history.json`. Ray's own
`MLflowLoggerCallback` makes flat runs without nesting, status tags or gap filling — hence this one.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray import tune

from study.confirm import stage_of
from study.mlflow_store import log_dataset
from study.plan import from_tune
from study.storage import Location, is_uri
from trainables.config import TrialConfig
from trainables.records import (EPOCH_KEY, ERROR_TAG, HISTORY_FILE, LR_EFFECTIVE_KEY, MICRO_CHOSEN_KEY, NODE_KEY,
                                NODE_TAG, PARENT_TAG, STAGE_TAG, STATUS_KEY, STATUS_TAG, TELEMETRY_FILE, TRANSFER_TAG,
                                TRIAL_ID_TAG, VARIANT_TAG, TrialStatus)
from trainables.session import ACTOR_STARTED_KEY

ERROR_FILE = "error.txt"  # an errored trial's full error text (artifact)
START_OVERHEAD_METRIC = "start_overhead_seconds"  # Tune starting a trial → its first report, minus that epoch
LAUNCH_METRIC = "launch_seconds"  # start overhead outside the loop's own setup (Tune, Ray, process, imports)
LOST_TRIAL = "lost: the study was interrupted before Tune saved this trial, and --resume did not continue it"


def resolved(config: TrialConfig) -> dict[str, Any]:
    """Every setting of the trial, defaults included, plus `lr_effective` (the lr after batch scaling)."""
    return {**config.to_dict(), LR_EFFECTIVE_KEY: config.learning_rate()}


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


class StudyRecorder(tune.Callback):
    """Tune callback writing each trial as a nested MLflow run (params, per-epoch metrics, status, telemetry)."""

    def __init__(self, tracking_uri: str, exp_id: str, parent_run_id: str, max_epoch: int, train_storage: str,
                 dataset: dict[str, str] | None = None):
        self.tracking_uri, self.exp_id, self.parent = tracking_uri, exp_id, parent_run_id
        self.dataset = dataset  # what each trial's run records as its training data (`mlflow_store.dataset_input`)
        self.train_storage = train_storage  # the trials' Ray Train folders (checkpoints epoch_NNNN), a path or URI
        self.max_epoch = max_epoch
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}
        self._logged: dict[str, set[int]] = {}
        self._started: dict[str, float] = {}
        self._last: dict[str, dict[str, Any]] = {}
        self._checkpoints: dict[str, str] = {}
        self._experiment_started = time.time()
        # The runs this driver created and has not closed skip the lookups a resumed study needs (its trials' runs
        # found by tag, the runs an earlier driver closed left alone); a recorder unpickled by `--resume`
        # (`__getstate__`) has none and looks up every trial's run.
        self._open: set[str] = set()
        self._restored = False

    def setup(self, **info):
        self._experiment_started = time.time()  # Tune starting (or restoring) the study: no actor starts before

    @property
    def client(self) -> MlflowClient:
        if self._client is None:  # created lazily: the callback is pickled with the Tuner
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def __getstate__(self) -> dict[str, Any]:
        """What Tune saves with the study: a recorder unpickled by `--resume` looks up what it finds."""
        return {**self.__dict__, "_client": None, "_open": set(), "_restored": True}

    def run_for(self, trial) -> str:
        """The trial's MLflow run: found by tag (resume) or created, with the trial's params."""
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        found = self._find_run(trial) if self._restored else []  # a new study's trial has no run yet
        if found:
            run_id = found[0].info.run_id
            history = self.client.get_metric_history(run_id, "epoch")
            self._logged[trial.trial_id] = {int(m.value) for m in history}
        else:
            run_id = self.client.create_run(self.exp_id, run_name=str(trial), tags={  # Tune's name, `<variant>-<n>`
                PARENT_TAG: self.parent, TRIAL_ID_TAG: trial.trial_id, VARIANT_TAG: str(trial.config.get("variant", "")),
                STAGE_TAG: stage_of(trial.config), STATUS_TAG: TrialStatus.RUNNING,
                **({TRANSFER_TAG: trial.config[TRANSFER_TAG]} if TRANSFER_TAG in trial.config else {})}).info.run_id
            self.client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in sorted(resolved(from_tune(trial.config)).items())])
            log_dataset(self.client, run_id, getattr(self, "dataset", None))  # None: a recorder saved before it was
            self._logged[trial.trial_id] = set()
            self._open.add(run_id)
        self._runs[trial.trial_id] = run_id
        return run_id

    def _find_run(self, trial) -> list:
        """The trial's run made by an earlier driver of this study (`--resume`), if any."""
        query = f"tags.{TRIAL_ID_TAG} = '{trial.trial_id}' and tags.`{PARENT_TAG}` = '{self.parent}'"
        return self.client.search_runs([self.exp_id], query, max_results=1)

    def _epoch_metrics(self, trial, epochs: list[dict[str, Any]]) -> list[Metric]:
        """The metrics of those `epochs` not logged yet (each epoch once: the `epoch` history is the ledger)."""
        logged = self._logged.setdefault(trial.trial_id, set())
        batch, now = [], int(time.time() * 1000)
        for metrics in epochs:
            epoch = int(metrics.get("epoch", 0))
            if epoch < 1 or epoch in logged:
                continue
            batch += [Metric(k, v if math.isfinite(v) else float("nan"), now, epoch)
                      for k, v in _numeric(metrics).items()]
            logged.add(epoch)
        return batch

    def _write(self, run_id: str, metrics: list[Metric], tags: list[RunTag]) -> None:
        """One `log_batch` per ≤ 900 metrics (MLflow caps a batch at 1,000 entries), the tags with the first.

        One call, not one per kind: each is a SQLite transaction of ~5–17 ms on the study driver's one thread
        (py-spy over a 24-trial study), which every trial's report waits behind."""
        for start in range(0, max(len(metrics), 1 if tags else 0), 900):
            self.client.log_batch(run_id, metrics=metrics[start:start + 900], tags=tags if start == 0 else ())

    def _at(self, path: str) -> Location:
        """A checkpoint path as Ray hands it over (a local path, or the storage's path without its scheme)."""
        storage = Location.of(self.train_storage)
        if is_uri(path) or storage.is_local:
            return Location.of(path)
        return Location(f"{storage.uri.partition('://')[0]}://{path.lstrip('/')}")

    def _checkpoint_history(self, result: dict[str, Any]) -> list[dict[str, Any]]:
        path = result.get("checkpoint_path")
        history = self._at(path) / HISTORY_FILE if path else None
        return json.loads(history.read_text()) if history is not None and history.is_file() else []

    def _latest_checkpoint(self, trial, last: dict[str, Any]) -> Location | None:
        """The trial's newest checkpoint: Ray Train's (`train/<trial>/epoch_NNNN`), which Tune may never have
        seen (the Train run finished its last epochs while the study driver was down), or Tune's own
        (`<trial folder>/checkpoint_NNNNNN`) for trials trained in their Tune actor."""
        found = [d for d in (Location.of(self.train_storage) / trial.trial_id).children() if d.name.startswith("epoch_")]
        if trial.path:
            found += [d for d in self._at(trial.path).children() if d.name.startswith("checkpoint_")]
        found += [self._at(p) for p in (last.get("checkpoint_path"), self._checkpoints.get(trial.trial_id)) if p]
        epochs = {d: self._last_epoch(d) for d in found}
        epochs = {d: e for d, e in epochs.items() if e >= 0}
        return max(epochs, key=epochs.get) if epochs else None

    @staticmethod
    def _last_epoch(checkpoint: Location) -> int:
        """The last epoch in a checkpoint's history (-1 if it has none: being written, pruned, not one)."""
        try:
            history = json.loads((checkpoint / HISTORY_FILE).read_text())
        except (OSError, ValueError):
            return -1
        return int(history[-1].get("epoch", 0)) if history else 0

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        self._checkpoints[trial.trial_id] = checkpoint.path  # a trial trained in its Tune actor

    def on_trial_start(self, iteration, trials, trial, **info):
        self._started[trial.trial_id] = time.time()
        run_id = self.run_for(trial)
        if run_id not in self._open and self._errored(run_id):  # restarted by --resume-errored
            self._reopen(run_id)

    def _errored(self, run_id: str) -> bool:
        """Whether an earlier driver of this study closed the run as errored."""
        return self.client.get_run(run_id).data.tags.get(STATUS_TAG) == TrialStatus.ERRORED

    def _reopen(self, run_id: str) -> None:
        """An errored trial runs again: its run RUNNING until it ends again, without its error tag (its error file
        stays, the attempt's record)."""
        self.client.update_run(run_id, status="RUNNING")
        self.client.set_tag(run_id, STATUS_TAG, TrialStatus.RUNNING.value)
        self.client.delete_tag(run_id, ERROR_TAG)
        self._open.add(run_id)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self.run_for(trial)  # first: a restored study's run tells which epochs are logged
        epoch = int(result.get("epoch", 0))
        known = self._logged.get(trial.trial_id, set())
        new_epoch = epoch not in known
        epochs = [result]
        if epoch > 1 and not set(range(1, epoch)) <= known:
            epochs = self._checkpoint_history(result) + epochs  # fill epochs the driver missed
        metrics, tags = self._epoch_metrics(trial, epochs), []
        self._last[trial.trial_id] = result
        started = self._started.pop(trial.trial_id, None)
        # only a report of a newly trained epoch times a start (a finished trial restored by --resume
        # hands back its old last result; a resumed attempt may repeat the epoch after its checkpoint)
        if started is not None and new_epoch and "epoch_seconds" in result:
            metrics += self._start_overhead(result, started)
        if started is not None and MICRO_CHOSEN_KEY in result:
            self._log_chosen_micro_batch(trial, int(result[MICRO_CHOSEN_KEY]))
        if NODE_KEY in result:  # each attempt's first report: where it ran (the latest attempt's node)
            tags.append(RunTag(NODE_TAG, str(result[NODE_KEY])))
        self._write(run_id, metrics, tags)

    def _log_chosen_micro_batch(self, trial, size: int) -> None:
        """`micro_batch_size=auto`'s pick as a param; a restart on another device may pick another (then the
        per-epoch metric of the same name tells, since a param cannot change)."""
        try:
            self.client.log_param(self.run_for(trial), MICRO_CHOSEN_KEY, size)
        except MlflowException:
            pass

    def _start_overhead(self, result: dict[str, Any], started: float) -> list[Metric]:
        """Wall time from the trial's start to its first report minus that epoch's training, and its split."""
        if ACTOR_STARTED_KEY in result:  # a new actor: count its process start too
            started = min(started, max(float(result[ACTOR_STARTED_KEY]), self._experiment_started))
        overhead = time.time() - started - float(result["epoch_seconds"])
        phases = [Metric(START_OVERHEAD_METRIC, overhead, int(time.time() * 1000), 0)]
        if "setup_seconds" in result:  # the rest: scheduling, actor/worker start, imports, first report
            phases.append(Metric(LAUNCH_METRIC, overhead - float(result["setup_seconds"]), phases[0].timestamp, 0))
        return phases

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = self._last.get(trial.trial_id, trial.last_result or {})
        checkpoint = self._latest_checkpoint(trial, last)
        history = self._checkpoint_history({"checkpoint_path": str(checkpoint)}) if checkpoint else []
        if history and int(history[-1].get("epoch", 0)) > int(last.get("epoch", 0)):
            last = history[-1]
        if checkpoint:  # its telemetry and history (in-actor trials' results carry no checkpoint path)
            last = {**last, "checkpoint_path": str(checkpoint)}
        self._finish(trial, self._ended_as(last), last)

    def _ended_as(self, last: dict[str, Any]) -> TrialStatus:
        """A finished trial's status: diverged, stopped by ASHA before the budget's last epoch, or completed."""
        if last.get(STATUS_KEY) == TrialStatus.DIVERGED:
            return TrialStatus.DIVERGED
        return TrialStatus.STOPPED_BY_ASHA if int(last.get(EPOCH_KEY, 0)) < self.max_epoch else TrialStatus.COMPLETED

    def on_trial_error(self, iteration, trials, trial, **info):
        last = self._last.get(trial.trial_id, {})
        checkpoint = self._latest_checkpoint(trial, last)
        self._finish(trial, TrialStatus.ERRORED, {**last, "checkpoint_path": str(checkpoint)} if checkpoint else last)

    def on_experiment_end(self, trials, **info):
        """Close the runs of trials that Tune's saved state does not hold: a trial started less than a
        snapshot interval before the study was killed is forgotten on `--resume` (Tune samples a new one)."""
        known = {t.trial_id for t in trials}
        query = f"tags.`{PARENT_TAG}` = '{self.parent}' and tags.{STATUS_TAG} = '{TrialStatus.RUNNING}'"
        for run in self.client.search_runs([self.exp_id], query):
            if run.data.tags.get(TRIAL_ID_TAG) in known:
                continue
            if not self.client.get_metric_history(run.info.run_id, "epoch"):
                self.client.delete_run(run.info.run_id)  # it never trained: nothing to keep
                continue
            self._close(run.info.run_id, TrialStatus.ERRORED, tags=[RunTag(ERROR_TAG, LOST_TRIAL)])

    def _finish(self, trial, status: TrialStatus, last: dict[str, Any]) -> None:
        run_id = self.run_for(trial)
        if run_id not in self._open and self._closed(run_id):
            return  # already closed (a trial restored after the driver died reports its end again)
        metrics = self._epoch_metrics(trial, self._checkpoint_history(last))
        checkpoint = last.get("checkpoint_path")
        telemetry = self._at(checkpoint) / TELEMETRY_FILE if checkpoint else None
        if telemetry is not None and telemetry.is_file():
            with telemetry.local_copy() as local:
                self.client.log_artifact(run_id, str(local))
        tags = [self._record_error(trial, run_id)] if status == TrialStatus.ERRORED else []
        self._close(run_id, status, metrics, tags)

    def _closed(self, run_id: str) -> bool:
        """Whether the run was ended already (by an earlier driver of this study)."""
        run = self.client.get_run(run_id)
        return run.info.status != "RUNNING" and run.data.tags.get(STATUS_TAG) != TrialStatus.RUNNING

    def _close(self, run_id: str, status: TrialStatus, metrics: Sequence[Metric] = (), tags: Sequence[RunTag] = ()) -> None:
        """Write the run's last `metrics` and `tags` with its final status tag, and end it (FAILED for an errored
        trial)."""
        self._write(run_id, list(metrics), [*tags, RunTag(STATUS_TAG, status.value)])
        self.client.set_terminated(run_id, "FAILED" if status == TrialStatus.ERRORED else "FINISHED")
        self._open.discard(run_id)

    def _record_error(self, trial, run_id: str) -> RunTag:
        """The trial's error text: its full file as an artifact, its last line in the log and as the `error` tag
        (returned, for the run's closing write)."""
        error_file = Path(trial.error_file) if trial.error_file else None
        text = error_file.read_text(errors="replace") if error_file and error_file.is_file() else ""
        line = error_summary(text) or "unknown error (Ray left no error file)"
        if text:
            self.client.log_text(run_id, text, ERROR_FILE)
        print(f"trial {trial.trial_id} errored: {line}", file=sys.stderr, flush=True)
        return RunTag(ERROR_TAG, line[:5000])


def error_summary(text: str) -> str:
    """The deepest exception line of a (possibly nested, Ray-wrapped) traceback text."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    raised = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt|Exit)\b.*:", ln)]
    return raised[-1] if raised else (lines[-1] if lines else "")
