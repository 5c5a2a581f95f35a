"""Where a worker loop runs: a Ray Train worker (multi-worker DDP) or the Tune trial actor itself (one worker).

The loops in `classification.py` and `barlow_twins.py` talk to Ray only through a session, so the same
loop, checkpoints and reports serve both. A one-worker trial run inside its Tune actor skips Ray Train's
controller and worker-group start-up (measured 20–30 s per trial on the 2-core CI machine), and with
`reuse_actors` also the actor's process start and imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import ray
import torch


class Session(Protocol):
    """What a worker loop needs from Ray: its rank, its device, its checkpoint, and a way to report."""

    rank: int
    world_size: int

    def device(self, wanted: str) -> torch.device: ...

    def checkpoint(self) -> Any: ...

    def report(self, metrics: dict[str, Any], directory: str | None, name: str) -> None: ...

    def wait_for_checkpoints(self) -> None: ...


def _checked(wanted: str, device: torch.device) -> torch.device:
    if wanted == "cuda" and device.type != "cuda":
        raise RuntimeError("device: 'cuda' requested but this worker has no GPU (set gpus_per_worker)")
    return device


@dataclass
class TrainSession:
    """A Ray Train worker of a TorchTrainer run (Train V2 API)."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def create(cls) -> "TrainSession":
        ctx = ray.train.get_context()
        return cls(ctx.get_world_rank(), ctx.get_world_size())

    def device(self, wanted: str) -> torch.device:
        import ray.train.torch

        return torch.device("cpu") if wanted == "cpu" else _checked(wanted, ray.train.torch.get_device())

    def checkpoint(self) -> Any:
        return ray.train.get_checkpoint()

    def report(self, metrics: dict[str, Any], directory: str | None, name: str) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(directory) if directory else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)

    def wait_for_checkpoints(self) -> None:
        ray.train.get_all_reported_checkpoints()  # the controller registers reports asynchronously


ACTOR_STARTED_KEY = "actor_started_at"  # a trial's first report from a new actor process: when the process started


@dataclass
class TuneSession:
    """The Tune trial actor itself, as the only worker (Tune function API; reports are synchronous)."""

    rank: int = 0
    world_size: int = 1
    first_report: dict[str, Any] = field(default_factory=dict)  # added to the first report only

    def device(self, wanted: str) -> torch.device:
        if wanted == "cpu":
            return torch.device("cpu")
        has_gpu = bool(ray.get_gpu_ids()) and torch.cuda.is_available()  # Ray sets CUDA_VISIBLE_DEVICES
        return _checked(wanted, torch.device("cuda" if has_gpu else "cpu"))

    def checkpoint(self) -> Any:
        return ray.tune.get_checkpoint()

    def report(self, metrics: dict[str, Any], directory: str | None, name: str) -> None:
        metrics, self.first_report = {**metrics, **self.first_report}, {}
        ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(directory) if directory else None)

    def wait_for_checkpoints(self) -> None:
        """Nothing to wait for: `tune.report` returns once the checkpoint is persisted and handed to Tune."""
