"""What a Tune trial actor runs (`trial_driver`): kept apart from `study.tuner` so that a new actor imports only
what training needs — not Optuna, MLflow, SciPy or the report code, which `study.tuner`'s driver side pulls in
(measured here: `import study.trial` 2.9 s against `import study.tuner` 4.9 s in a fresh process, paid by
every new trial actor)."""

from __future__ import annotations

import json
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from study.clock import process_started
from study.plan import StudyPlan, from_tune, in_actor
from study.storage import Location
from trainables.launch import LOOPS, build_trainer
from trainables.session import ACTOR_STARTED_KEY, TuneSession

FINAL_FILE = "final.json"  # a finished trial's marker in its Train folder (`study.tuner.FinishedTrials`)


def trial_driver(config: dict[str, Any], plan: StudyPlan, train_storage: str, max_failures: int,
                 data_ref: Any = None) -> None:
    """One Tune trial: train this sampled configuration (in this actor, or as a Ray Train job)."""
    trial_id = tune.get_context().get_trial_id()
    final = Location.of(train_storage) / trial_id / FINAL_FILE
    if final.is_file():  # finished before the study was interrupted: hand back its last result only
        tune.report(json.loads(final.read_text())["result"])
        return
    space, cfg = plan.space, from_tune(config)
    if in_actor(plan):
        session = TuneSession(first_report=_new_actor_start())
        LOOPS[cfg.task](cfg.to_dict(), session=session, shared_data=data_ref)
        return
    trainer = build_trainer(
        cfg.to_dict(), num_workers=space.workers, use_gpu=space.gpus_per_worker > 0,
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
    return {ACTOR_STARTED_KEY: process_started()} if _trials_in_this_process == 1 else {}
