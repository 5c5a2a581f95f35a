"""Studies' MLflow stores with known values, shared by the report tests: a search-only study (nine trial
runs, no stage tags: `TRIALS`) and a confirmed one at two batch sizes (search and confirm stages: `STAGED`)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from study.storage import Location
from study.mlflow_store import experiment_id
from trainables.records import ARTIFACTS_FOLDER

HOUR_MS = 3_600_000
COMMON = {"task": "clf", "dataset": "cifar10", "model": "resnet18", "epochs": 100, "batch_size": 512,
          "momentum": 0.9, "weight_decay": 0.0005, "device": "cuda", "threads": 4}
LARS_WU = {**COMMON, "optimizer": "lars", "scheduler": "warmup_cosine", "warmup_epochs": 5.0, "lr": 2.0}
LARS = {**COMMON, "optimizer": "lars", "scheduler": "poly", "warmup_epochs": 5.0, "lr": 2.0}
TVLARS = {**COMMON, "optimizer": "tvlars", "scheduler": "none", "lr": 2.0}
LAMB_WU = {**COMMON, "optimizer": "lamb", "scheduler": "warmup_cosine", "warmup_epochs": 5.0, "lr": 0.01}
VAL_BELOW_TEST = 1.0  # a staged trial's validation top-1 is its test top-1 less this, epoch by epoch


class Trial(NamedTuple):
    settings: dict
    status: str
    curve: dict[int, float]  # test top-1 per epoch; final = last epoch, best = max
    stage: str | None = None  # the stage tag; None: none (the report reads "search")
    variant: str | None = None  # the variant tag; None: the optimizer's name

    def val(self) -> dict[int, float]:
        """The validation top-1 a staged trial logs (an unstaged one logs none)."""
        return {e: v - VAL_BELOW_TEST for e, v in self.curve.items()} if self.stage else {}


TRIALS = [
    Trial({**LARS_WU, "seed": 0}, "completed", {1: 30.0, 50: 71.0, 100: 70.0}),
    Trial({**LARS_WU, "seed": 1}, "completed", {1: 30.0, 50: 73.0, 100: 72.0}),
    Trial({**LARS_WU, "seed": 2}, "completed", {1: 30.0, 50: 75.0, 100: 74.0}),
    Trial({**LARS, "seed": 0}, "completed", {1: 20.0, 50: 61.0, 100: 60.0}),
    Trial({**LARS, "seed": 1}, "completed", {1: 20.0, 50: 65.0, 100: 64.0}),
    Trial({**LARS, "seed": 2}, "diverged", {1: 10.0, 50: 10.0}),
    Trial({**TVLARS, "lam": 0.001, "seed": 0}, "completed", {1: 40.0, 50: 76.0, 100: 75.0}),
    Trial({**TVLARS, "lam": 0.01, "seed": 0}, "diverged", {1: 10.0, 50: 10.0}),
    Trial({**LAMB_WU, "seed": 0}, "stopped_by_asha", {1: 25.0, 30: 50.0}),
]


def _search(settings: dict, name: str, final: float, stopped: bool = False) -> Trial:
    """A search trial of variant `<name>_bs<batch>`, seed 0, rising to `final` (at epoch 30 when ASHA stopped it)."""
    curve = {1: final / 2, 30: final} if stopped else {1: final / 2, 100: final}
    return Trial({**settings, "seed": 0}, "stopped_by_asha" if stopped else "completed", curve, "search",
                 f"{name}_bs{settings['batch_size']}")


def _confirm(settings: dict, name: str, finals: tuple[float, ...]) -> list[Trial]:
    """The confirm stage's seeds (1, 2, …) of one configuration, each rising to its final value."""
    return [Trial({**settings, "seed": seed}, "completed", {1: final / 2, 100: final}, "confirm",
                  f"{name}_bs{settings['batch_size']}") for seed, final in enumerate(finals, 1)]


WU_512, NO_512, TV_512 = LARS_WU, LARS, {**TVLARS, "lam": 0.0012345, "delay_epochs": 1.0}
WU_1024, NO_1024 = {**LARS_WU, "batch_size": 1024, "lr": 2.83}, {**LARS, "batch_size": 1024, "lr": 2.83}
TV_1024 = {**TV_512, "batch_size": 1024, "lr": 2.83}
# Search: lars_warmup_bs512 has 4 trials (the report shows its best 3); tvlars_bs512 searched lr and lam.
# Confirm: each optimizer at one lr per batch size, 2 seeds (final test top-1: means 71/62/76 at 512, 61/60/57 at 1024).
STAGED = [
    _search({**WU_512, "lr": 1.0623}, "lars_warmup", 68.0), _search(WU_512, "lars_warmup", 71.0),
    _search({**WU_512, "lr": 3.3333}, "lars_warmup", 66.0), _search({**WU_512, "lr": 0.5}, "lars_warmup", 40.0, True),
    _search(NO_512, "lars_nowarmup", 61.0),
    _search(TV_512, "tvlars", 74.0),
    _search({**TV_512, "lr": 1.5, "lam": 0.01, "delay_epochs": 2.0}, "tvlars", 50.0, True),
    _search(WU_1024, "lars_warmup", 60.0), _search(NO_1024, "lars_nowarmup", 59.0), _search(TV_1024, "tvlars", 56.0),
    *_confirm(WU_512, "lars_warmup", (70.0, 72.0)), *_confirm(NO_512, "lars_nowarmup", (60.0, 64.0)),
    *_confirm(TV_512, "tvlars", (75.0, 77.0)), *_confirm(WU_1024, "lars_warmup", (60.0, 62.0)),
    *_confirm(NO_1024, "lars_nowarmup", (58.0, 62.0)), *_confirm(TV_1024, "tvlars", (55.0, 59.0)),
]


def _log_trial(client: MlflowClient, exp: str, pid: str, i: int, trial: Trial) -> None:
    tags = {"mlflow.parentRunId": pid, "trial_id": f"trial_{i}", "status": trial.status,
            "variant": trial.variant or trial.settings["optimizer"], **({"stage": trial.stage} if trial.stage else {})}
    run = client.create_run(exp, run_name=f"t{i}", start_time=1000 + i, tags=tags)
    params = {**trial.settings, "lr_effective": trial.settings["lr"]}
    values = [(epoch, "test_top1", top1) for epoch, top1 in trial.curve.items()]
    values += [(epoch, "val_top1", top1) for epoch, top1 in trial.val().items()]
    values += [(epoch, "epoch", float(epoch)) for epoch in trial.curve]
    values += [(epoch, "train_loss", 1.0 / epoch) for epoch in trial.curve]
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()],
                     metrics=[Metric(k, v, 0, epoch) for epoch, k, v in values])
    client.set_terminated(run.info.run_id, "FINISHED", end_time=1000 + i + HOUR_MS)


def build_store(root: Path, experiment: str = "known", trials: list[Trial] = TRIALS) -> tuple[str, str]:
    """The store at `root` with one study of `trials`; returns (tracking URI, the study's parent run id)."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = experiment_id(client, experiment, Location.of(root / ARTIFACTS_FOLDER))  # as a study creates it
    parent = client.create_run(exp, run_name="known-study", start_time=1000, tags={"study_path": str(root / "study")})
    pid = parent.info.run_id
    client.log_batch(pid, params=[Param("resources.workers", "2"), Param("resources.cpus_per_worker", "4"),
                                  Param("resources.gpus_per_worker", "0")])
    for i, trial in enumerate(trials):
        _log_trial(client, exp, pid, i, trial)
    client.set_terminated(pid, "FINISHED", end_time=1000 + 2 * HOUR_MS)
    return uri, pid
