"""Run one trial as a Ray Train job: `fit(config, num_workers=…)` → `TrialOutcome`.

Uses Ray Train V2 (Ray 2.60's default): `TorchTrainer` with `ScalingConfig`, per-epoch
checkpoints kept by `CheckpointConfig`, worker crashes retried from the last checkpoint by
`FailureConfig`. `init_local_ray` starts a local Ray with enough logical CPUs that the Train
controller, its workers and (under Tune) the trial driver never wait on each other.
"""

from __future__ import annotations

import os
import shlex
import sys
import math
from dataclasses import dataclass
from typing import Any, Callable

import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
from ray.train.torch import TorchTrainer


from trainables.barlow_twins import train_barlow_twins
from trainables.batches import resolve_batching
from trainables.classification import train_classifier
from trainables.config import TrialConfig
from trainables.environment import with_worker_env
from trainables.records import STATUS_KEY, TrialStatus
from trainables.worker import SHARED_DATA_KEY

LOOPS: dict[str, Callable[[dict], None]] = {"clf": train_classifier, "bt": train_barlow_twins}


def local_cpu_slots(num_workers: int, cpus_per_worker: float = 1.0) -> int:
    """Logical CPUs for a local Ray: the machine's cores, but never fewer than the run needs plus headroom.

    Logical CPUs are scheduling tokens, not threads: on a 2-core machine Ray must still be able to
    place the Train controller, every worker and a Tune trial driver at once, or it stalls.
    """
    return max(os.cpu_count() or 1, math.ceil(num_workers * cpus_per_worker) + 4, 8)


WORKER_NICENESS_ENV = "RAY_worker_niceness"  # Ray's config variable for its workers' nice value


def init_local_ray(num_cpus: int | None = None, **kwargs: Any) -> None:
    """Start (once) a local Ray for this process, unless one is already connected."""
    if not ray.is_initialized():
        # The dashboard serves the State API, which Ray Train's PlacementGroupCleaner needs to free the
        # resources of a run whose controller was killed (e.g. a trial stopped by ASHA).
        # address="local": always a new local instance. Without it ray.init joins whatever
        # /tmp/ray/ray_current_cluster names (left by any earlier `ray start`, even a dead one) and then
        # refuses num_cpus with a ValueError: the CI flake of a study exiting 2 before its Ray started.
        # Ray starts workers at nice 15 (worker_niceness) so its daemons stay responsive; on a machine the study
        # owns that starves the trials instead: measured on 2 cores (trainables.bench, ResNet-8 bs 512), a
        # one-worker Tune trial ran 1.256x slower than the bare loop (IQR [1.217, 1.311]) at nice 15 and 1.076x
        # (IQR [1.069, 1.090]) at nice 0. Only the local Ray this process starts; a user's setting wins.
        os.environ.setdefault(WORKER_NICENESS_ENV, "0")
        kwargs["runtime_env"] = with_quoted_interpreter(with_worker_env(kwargs.get("runtime_env")))
        ray.init(address="local", num_cpus=num_cpus or local_cpu_slots(1), include_dashboard=True,
                 dashboard_host="127.0.0.1", log_to_driver=False, **kwargs)


def with_quoted_interpreter(runtime_env: dict[str, Any] | None) -> dict[str, Any] | None:
    """`runtime_env`, naming this process's Python quoted (`py_executable`) when its path needs quoting.

    Ray 2.60 starts a worker that has a runtime_env (env_vars, py_modules, a Train worker's fault env) through
    `bash -c "exec <python> <args>"`, quoting the arguments but not the interpreter
    (ray/_private/runtime_env/context.py: exec_worker): from a checkout under a path with a space every such
    worker died with `bash: /tmp/sp: No such file or directory` and trials waited for actors that never
    started. Only for the local Ray this process starts, whose workers run this very interpreter.
    """
    quoted = shlex.quote(sys.executable)
    if quoted == sys.executable:
        return runtime_env
    return {**(runtime_env or {}), "py_executable": quoted}


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
