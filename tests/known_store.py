"""A study's MLflow store with known values (a parent run, nine trial runs), shared by the report tests."""

from __future__ import annotations

from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from study.storage import Location
from study.mlflow_store import experiment_id

HOUR_MS = 3_600_000
COMMON = {"task": "clf", "dataset": "cifar10", "model": "resnet18", "epochs": 100, "batch_size": 512,
          "momentum": 0.9, "weight_decay": 0.0005, "device": "cuda", "threads": 4}
LARS_WU = {**COMMON, "optimizer": "lars", "scheduler": "warmup_cosine", "warmup_epochs": 5.0, "lr": 2.0}
LARS = {**COMMON, "optimizer": "lars", "scheduler": "poly", "warmup_epochs": 5.0, "lr": 2.0}
TVLARS = {**COMMON, "optimizer": "tvlars", "scheduler": "none", "lr": 2.0}
LAMB_WU = {**COMMON, "optimizer": "lamb", "scheduler": "warmup_cosine", "warmup_epochs": 5.0, "lr": 0.01}
# (settings, status, test_top1 per epoch {epoch: value}); final = last epoch, best = max
TRIALS = [
    ({**LARS_WU, "seed": 0}, "completed", {1: 30.0, 50: 71.0, 100: 70.0}),
    ({**LARS_WU, "seed": 1}, "completed", {1: 30.0, 50: 73.0, 100: 72.0}),
    ({**LARS_WU, "seed": 2}, "completed", {1: 30.0, 50: 75.0, 100: 74.0}),
    ({**LARS, "seed": 0}, "completed", {1: 20.0, 50: 61.0, 100: 60.0}),
    ({**LARS, "seed": 1}, "completed", {1: 20.0, 50: 65.0, 100: 64.0}),
    ({**LARS, "seed": 2}, "diverged", {1: 10.0, 50: 10.0}),
    ({**TVLARS, "lam": 0.001, "seed": 0}, "completed", {1: 40.0, 50: 76.0, 100: 75.0}),
    ({**TVLARS, "lam": 0.01, "seed": 0}, "diverged", {1: 10.0, 50: 10.0}),
    ({**LAMB_WU, "seed": 0}, "stopped_by_asha", {1: 25.0, 30: 50.0}),
]


def build_store(root: Path, experiment: str = "known") -> tuple[str, str]:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = experiment_id(client, experiment, Location.of(root / "artifacts"))  # as a study creates it
    parent = client.create_run(exp, run_name="known-study", start_time=1000, tags={"study_path": str(root / "study")})
    pid = parent.info.run_id
    client.log_batch(pid, params=[Param("resources.workers", "2"), Param("resources.cpus_per_worker", "4"),
                                  Param("resources.gpus_per_worker", "0")])
    for i, (settings, status, curve) in enumerate(TRIALS):
        run = client.create_run(exp, run_name=f"t{i}", start_time=1000, tags={
            "mlflow.parentRunId": pid, "trial_id": f"trial_{i}", "variant": settings["optimizer"], "status": status})
        params = {**settings, "lr_effective": settings["lr"]}
        client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()], metrics=[
            Metric(k, v, 0, epoch) for epoch, top1 in curve.items()
            for k, v in (("epoch", float(epoch)), ("test_top1", top1), ("train_loss", 1.0 / epoch))])
        client.set_terminated(run.info.run_id, "FINISHED", end_time=1000 + HOUR_MS)
    client.set_terminated(pid, "FINISHED", end_time=1000 + 2 * HOUR_MS)
    return uri, pid
