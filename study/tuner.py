"""The Ray Tune study: OptunaSearch (seeded TPE over the space's define-by-run sampler) + ASHA.

A one-worker trial trains inside its own Tune actor (Ray's plain-Tune pattern: the worker loop with a
`TuneSession`, checkpoints through `tune.report`, actors reused between trials), so it starts in
seconds. A multi-worker trial is a small driver (Ray's documented Train V2 + Tune pattern): it builds
the trial's TorchTrainer, named by the trial id under the study's storage, and forwards every epoch's
report to Tune with `TuneReportCallback`; restored, it re-creates the TorchTrainer with the same name
and Train V2 resumes it from its latest checkpoint. Both run the same loop function, with the same
checkpoints and reports, and read the study's dataset from Ray's object store.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
# Barlow Twins trials report test accuracy only in their linear-eval stage.
os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
# Save the study's state often, so a killed driver loses at most seconds of trial bookkeeping.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")

from pathlib import Path
from typing import Any

import optuna
import psutil
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from study.plan import StudyPlan, settings_of
from study.record import StudyRecord
from trainables.config import TrialConfig
from trainables.launch import LOOPS, build_trainer
from trainables.session import ACTOR_STARTED_KEY, TuneSession


FINAL_FILE = "final.json"


class FinishedTrials(tune.Callback):
    """Marks each finished trial in its Train folder, so a study restored from a snapshot taken just
    before the trial ended does not run it again (the relaunched driver reports the final result and exits)."""

    def __init__(self, train_storage: str):
        self.train_storage = train_storage

    def _mark(self, trial, status: str) -> None:
        folder = Path(self.train_storage) / trial.trial_id
        folder.mkdir(parents=True, exist_ok=True)
        (folder / FINAL_FILE).write_text(json.dumps({"status": status, "result": _jsonable(trial.last_result)}))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._mark(trial, "terminated")


def _jsonable(result: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (result or {}).items() if isinstance(v, (int, float, str, bool)) and k != "done"}


def trial_driver(config: dict[str, Any], plan: StudyPlan, train_storage: str, max_failures: int,
                 data_ref: Any = None) -> None:
    """One Tune trial: train this sampled configuration (in this actor, or as a Ray Train job)."""
    trial_id = tune.get_context().get_trial_id()
    final = Path(train_storage) / trial_id / FINAL_FILE
    if final.is_file():  # finished before the study was interrupted: hand back its last result only
        tune.report(json.loads(final.read_text())["result"])
        return
    space, settings = plan.space, settings_of(config)
    if in_actor(plan):
        session = TuneSession(first_report=_new_actor_start())
        LOOPS[settings.get("task", TrialConfig.task)](settings, session=session, shared_data=data_ref)
        return
    trainer = build_trainer(
        settings, num_workers=space.workers, use_gpu=space.gpus_per_worker > 0,
        cpus_per_worker=space.cpus_per_worker, gpus_per_worker=space.gpus_per_worker or 1.0,
        storage_path=train_storage, name=trial_id, max_failures=max_failures,
        callbacks=[TuneReportCallback()], shared_data=data_ref)
    trainer.fit()


_trials_in_this_process = 0


def _new_actor_start() -> dict[str, float]:
    """For this process's first trial, when the process started: Tune calls `on_trial_start` only once a new
    actor is up, after its process start and imports, so the recorder counts those from here."""
    global _trials_in_this_process
    _trials_in_this_process += 1
    return {ACTOR_STARTED_KEY: psutil.Process().create_time()} if _trials_in_this_process == 1 else {}


def in_actor(plan: StudyPlan) -> bool:
    """Whether trials train inside their Tune actor (one worker) rather than as a Ray Train job."""
    return plan.space.workers == 1


def trainable(plan: StudyPlan, record: StudyRecord, max_failures: int, data_ref: Any = None):
    fn = tune.with_parameters(trial_driver, plan=plan, train_storage=str(record.train_dir),
                              max_failures=max_failures, data_ref=data_ref)
    space = plan.space
    if in_actor(plan):  # the actor is the worker: it holds the worker's CPU/GPU reservation
        return tune.with_resources(fn, {"CPU": space.cpus_per_worker, "GPU": space.gpus_per_worker})
    # The driver only waits on its Train run; its workers hold the real CPU/GPU reservations.
    return tune.with_resources(fn, {"CPU": 0.01})


def searcher(plan: StudyPlan, seed: int) -> OptunaSearch:
    space = plan.space
    return OptunaSearch(space=plan.define_by_run, metric=space.metric, mode=space.mode,
                        sampler=optuna.samplers.TPESampler(seed=seed))


def scheduler(plan: StudyPlan) -> ASHAScheduler:
    space = plan.space
    metric, mode = space.scheduler_metric or (space.metric, space.mode)
    return ASHAScheduler(time_attr="epoch", metric=metric, mode=mode, max_t=plan.max_epoch,
                         grace_period=space.grace_period, reduction_factor=space.reduction_factor)


def new_tuner(plan: StudyPlan, record: StudyRecord, callbacks: list, max_failures: int,
              data_ref: Any = None) -> tune.Tuner:
    return tune.Tuner(
        trainable(plan, record, max_failures, data_ref),
        tune_config=tune.TuneConfig(search_alg=searcher(plan, record.seed), scheduler=scheduler(plan),
                                    num_samples=plan.space.num_samples, max_concurrent_trials=plan.concurrency,
                                    reuse_actors=True),  # a trial's actor, process and imports serve the next
        run_config=tune.RunConfig(
            name=record.name, storage_path=str(record.storage),
            callbacks=[*callbacks, FinishedTrials(str(record.train_dir))], verbose=1,
            # in-actor trials: Tune keeps their checkpoints and retries a crashed one from its latest;
            # Ray Train trials do both themselves (retrying those here too would square the retries)
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=max_failures if in_actor(plan) else 0)),
    )


def restored_tuner(plan: StudyPlan, record: StudyRecord, max_failures: int, data_ref: Any = None) -> tune.Tuner:
    """Continue an interrupted study: finished trials stay finished, unfinished ones resume from checkpoints.

    The run config (and with it the MLflow callback, parent run and store) comes back from the study's
    own saved state; Tune restores the Optuna searcher's history too.
    """
    return tune.Tuner.restore(str(record.study_dir), trainable(plan, record, max_failures, data_ref),
                              resume_unfinished=True)
