"""Run one trial as a Ray Train job: `fit(config, num_workers=…)` → `TrialOutcome`.

Uses Ray Train V2 (Ray 2.60's default): `TorchTrainer` with `ScalingConfig`, per-epoch
checkpoints kept by `CheckpointConfig`, worker crashes retried from the last checkpoint by
`FailureConfig`, in the local Ray `trainables.local_ray` starts when none is connected.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError


from trainables.barlow_twins import train_barlow_twins
from trainables.batches import resolve_batching
from trainables.classification import train_classifier
from trainables.config import TrialConfig
from trainables.local_ray import init_local_ray, local_cpu_slots
from trainables.records import STATUS_KEY, TrialStatus
from trainables.worker import SHARED_DATA_KEY

if TYPE_CHECKING:
    from ray.train.torch import TorchTrainer

LOOPS: dict[str, Callable[[dict], None]] = {"clf": train_classifier, "bt": train_barlow_twins}


def default_threads(num_workers: int, use_gpu: bool) -> int:
    """torch threads per CPU worker: the machine's cores split between co-located workers."""
    return 1 if use_gpu else max(1, (os.cpu_count() or 1) // num_workers)


@dataclass
class TrialOutcome:
    """What a finished run left: final status, per-epoch metrics, last checkpoint, error if any."""

    status: str
    history: list[dict[str, Any]]
    checkpoint_path: str | None
    error: BaseException | None = None
    path: str | None = None

    @property
    def metrics(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


def build_trainer(config: dict[str, Any], *, num_workers: int = 1, use_gpu: bool = False,
                  cpus_per_worker: float = 1.0, gpus_per_worker: float = 1.0, storage_path: str | None = None, name: str | None = None,
                  max_failures: int = 0, callbacks: list | None = None, shared_data: Any = None,
                  worker_env: dict[str, str] | None = None) -> TorchTrainer:
    """A TorchTrainer for `config` (validated here, before Ray schedules anything); `shared_data`: the
    dataset's reference in Ray's object store, handed to every worker instead of a path to load;
    `worker_env`: environment variables of the workers."""
    from ray.train.torch import TorchTrainer  # ~0.1 s beyond what Ray Tune imports: only trials run by Ray Train

    cfg = TrialConfig.from_dict(config, check_data=shared_data is None)
    # the global batch must split evenly into workers, micro-batches and BatchNorm groups: checked before Ray starts
    resolve_batching(cfg.batch_size, num_workers, cfg.micro_batch_size, cfg.bn_group, use_gpu)
    if cfg.threads is None:
        cfg.threads = default_threads(num_workers, use_gpu)
    resources = {"CPU": cpus_per_worker} | ({"GPU": gpus_per_worker} if use_gpu else {})
    return TorchTrainer(
        LOOPS[cfg.task],
        train_loop_config=cfg.to_dict() | ({SHARED_DATA_KEY: shared_data} if shared_data is not None else {}),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=name, storage_path=storage_path, callbacks=callbacks,
            worker_runtime_env={"env_vars": worker_env} if worker_env else None,
            # the controller's own retries are bounded too (Ray's default is unlimited): a trial whose
            # workers cannot start ends as an error instead of retrying forever
            failure_config=FailureConfig(max_failures=max_failures, controller_failure_limit=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )


def fit(config: dict[str, Any], **kwargs: Any) -> TrialOutcome:
    """Train one configuration to the end (or divergence) and collect its per-epoch history."""
    trainer = build_trainer(config, **kwargs)
    try:
        result = trainer.fit() if ray.is_initialized() else _fit_with_local_ray(trainer, kwargs)
    except TrainingFailedError as error:
        return TrialOutcome(TrialStatus.ERRORED, [], None, error)
    checkpoint_path = result.checkpoint.path if result.checkpoint else None
    history = list(result.return_value or [])  # rank 0's history, including a diverged last epoch
    return TrialOutcome(history[-1][STATUS_KEY] if history else TrialStatus.ERRORED, history, checkpoint_path, None,
                        result.path)


def _fit_with_local_ray(trainer: TorchTrainer, kwargs: dict[str, Any]):
    init_local_ray(local_cpu_slots(kwargs.get("num_workers", 1), kwargs.get("cpus_per_worker", 1.0)))
    return trainer.fit()
