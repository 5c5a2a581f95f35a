"""The Ray Tune study: OptunaSearch (seeded TPE over the space's define-by-run sampler) + ASHA.

Each trial is a small driver (Ray's documented Train V2 + Tune pattern): it builds the trial's
TorchTrainer, named by the trial id under the study's storage, and forwards every epoch's report
to Tune with `TuneReportCallback`. A restored trial re-creates its TorchTrainer with the same
name, and Train V2 resumes it from its latest checkpoint.
"""

from __future__ import annotations

import functools
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
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from study.plan import StudyPlan
from trainables.launch import build_trainer


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


def trial_driver(config: dict[str, Any], plan: StudyPlan, train_storage: str, max_failures: int) -> None:
    """One Tune trial: run the Ray Train job for this sampled configuration."""
    trial_id = tune.get_context().get_trial_id()
    final = Path(train_storage) / trial_id / FINAL_FILE
    if final.is_file():  # finished before the study was interrupted: hand back its last result only
        tune.report(json.loads(final.read_text())["result"])
        return
    space = plan.space
    trainer = build_trainer(
        plan.trial_config(config), num_workers=space.workers, use_gpu=space.gpus_per_worker > 0,
        cpus_per_worker=space.cpus_per_worker, gpus_per_worker=space.gpus_per_worker or 1.0,
        storage_path=train_storage, name=trial_id, max_failures=max_failures,
        callbacks=[TuneReportCallback()])
    trainer.fit()


def trainable(plan: StudyPlan, study_dir: Path, max_failures: int):
    fn = tune.with_parameters(trial_driver, plan=plan, train_storage=str(study_dir / "train"), max_failures=max_failures)
    # The driver only waits on its Train run; its workers hold the real CPU/GPU reservations.
    return tune.with_resources(fn, {"CPU": 0.01})


def searcher(plan: StudyPlan, seed: int) -> OptunaSearch:
    space = plan.space
    return OptunaSearch(space=functools.partial(space.define_by_run, fixed=frozenset(plan.overrides)),
                        metric=space.metric, mode=space.mode, sampler=optuna.samplers.TPESampler(seed=seed))


def scheduler(plan: StudyPlan) -> ASHAScheduler:
    space = plan.space
    metric, mode = space.scheduler_metric or (space.metric, space.mode)
    return ASHAScheduler(time_attr="epoch", metric=metric, mode=mode, max_t=plan.max_epoch,
                         grace_period=space.grace_period, reduction_factor=space.reduction_factor)


def new_tuner(plan: StudyPlan, study_dir: Path, seed: int, callbacks: list, max_failures: int) -> tune.Tuner:
    return tune.Tuner(
        trainable(plan, study_dir, max_failures),
        tune_config=tune.TuneConfig(search_alg=searcher(plan, seed), scheduler=scheduler(plan),
                                    num_samples=plan.space.num_samples, max_concurrent_trials=plan.concurrency),
        run_config=tune.RunConfig(name=study_dir.name, storage_path=str(study_dir.parent),
                                  callbacks=[*callbacks, FinishedTrials(str(study_dir / "train"))],
                                  verbose=1),
    )


def restored_tuner(plan: StudyPlan, study_dir: Path, max_failures: int) -> tune.Tuner:
    """Continue an interrupted study: finished trials stay finished, unfinished ones resume from checkpoints.

    The run config (and with it the MLflow callback, parent run and store) comes back from the study's
    own saved state; Tune restores the Optuna searcher's history too.
    """
    return tune.Tuner.restore(str(study_dir), trainable(plan, study_dir, max_failures), resume_unfinished=True)
