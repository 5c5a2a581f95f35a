"""The epoch loop every worker loop shares (`run_epochs`: seeding, a device-side meter, divergence checks,
reports and checkpoints when due), evaluation, and the test-only fault hook."""

from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import Tensor, nn

from optim.telemetry import TrustRatioTelemetry
from trainables.batches import derived_seed, eval_batches
from trainables.checkpoints import RunState, report
from trainables.config import TrialConfig
from trainables.records import STATUS_KEY, TrialStatus
from trainables.worker import WorkerEnv, parameters_finite

# Test-only fault injection through the environment (a local Ray's workers inherit the driver's; Train
# workers also take `worker_env` from `build_trainer`): see `inject_faults`.
FAULT_ENV = "LAYERWISE_FAULT"


def inject_faults(env: WorkerEnv, state: RunState, before: bool = False) -> None:
    """Test-only faults from `$LAYERWISE_FAULT`, checked before each epoch (`before`) and after its report:
    `kill_after_epoch=K` SIGKILLs rank 0 once (not again in the attempt that resumed from K's checkpoint);
    `raise_after_epoch=K` and `raise_before_epoch=K` (K 1-based) make every worker raise."""
    fault = os.environ.get(FAULT_ENV, "")
    if before:
        if fault == f"raise_before_epoch={state.next_epoch + 1}":
            raise RuntimeError(f"injected fault: {FAULT_ENV}={fault}")
        return
    epoch = state.next_epoch
    if fault == f"kill_after_epoch={epoch}" and env.rank == 0 and state.resumed_from < epoch:
        # a hard crash once Ray has registered this epoch's checkpoint (the controller collects reports
        # asynchronously; this call waits for it)
        env.session.wait_for_checkpoints()
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == f"raise_after_epoch={epoch}":
        raise RuntimeError(f"injected fault: {FAULT_ENV}={fault}")


@dataclass
class Epochs:
    """A loop's own part of each epoch; `run_epochs` does the rest (seeding, meter, divergence, reports)."""

    train: Callable[[int, EpochMeter], None]  # run the epoch's steps, adding each to the meter
    evaluate: Callable[[int], dict[str, Any]]  # the epoch's metrics after its steps (evaluation, lr, stage)
    watched: Callable[[int], nn.Module]  # the module whose parameters must stay finite in this epoch
    classifies: Callable[[int], bool]  # whether the epoch's steps classify (train_top1 is meaningful)
    loss_limit: float = math.inf  # diverged once an epoch's mean train loss exceeds it


def run_epochs(cfg: TrialConfig, env: WorkerEnv, state: RunState, modules: dict[str, Any], total: int,
               epochs: Epochs, telemetry: TrustRatioTelemetry | None = None) -> list[dict[str, Any]]:
    """Train epochs `state.next_epoch`..`total`: each seeded from (seed, epoch, rank), metered on the device,
    checked for divergence, reported with its status, and checkpointed when due. Returns the history.

    Diverged (data, not an exception): a non-finite loss or parameter, or a mean train loss above
    `epochs.loss_limit`; the run ends there, without a checkpoint of the diverged state.
    """
    for epoch in range(state.next_epoch, total):
        inject_faults(env, state, before=True)
        torch.manual_seed(derived_seed(cfg.seed, epoch, env.rank))
        meter = EpochMeter(env.device)
        epochs.train(epoch, meter)
        train_loss, train_top1, seconds, images_per_second = meter.result(env)
        diverged = train_loss > epochs.loss_limit or not (
            meter.finite(env) and parameters_finite(epochs.watched(epoch)))
        state.next_epoch = epoch + 1
        metrics = {"epoch": epoch + 1, "train_loss": train_loss,
                   **({"train_top1": train_top1} if epochs.classifies(epoch) else {}),
                   **epochs.evaluate(epoch), **state.add_telemetry(telemetry, epoch + 1),
                   "epoch_seconds": seconds, "images_per_second": images_per_second,
                   STATUS_KEY: epoch_status(diverged, epoch + 1 == total).value}  # plain str: checkpoints stay plain
        due_now = not diverged and due(cfg.checkpoint_every, epoch + 1, total)
        report(env, state, metrics, modules if due_now else None, cfg)
        inject_faults(env, state)
        if diverged:
            break
    return state.history


def epoch_status(diverged: bool, last: bool) -> TrialStatus:
    """An epoch's status: diverged ends the run, the last epoch completes it."""
    return TrialStatus.DIVERGED if diverged else TrialStatus.COMPLETED if last else TrialStatus.RUNNING


class EpochMeter:
    """Sums of loss, correct predictions and examples kept on the device (no per-step host sync)."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)
        self.start = time.perf_counter()

    def add(self, loss: Tensor, logits: Tensor | None, targets: Tensor) -> None:
        """Accumulate one step on the device: in-place adds of device tensors and Python numbers only
        (no host-to-device copy, no read back)."""
        n = targets.shape[0]
        self.sums[0] += loss.detach().double() * n
        if logits is not None:
            self.sums[1] += (logits.argmax(1) == targets).sum()
        self.sums[2] += n

    def finite(self, env: WorkerEnv) -> bool:
        """Collective check that no worker's loss has become non-finite."""
        return bool(env.all_sum(self.sums[:1].clone()).isfinite().all())

    def result(self, env: WorkerEnv) -> tuple[float, float, float, float]:
        """(mean loss, top-1 %, seconds, images/s) over all workers."""
        loss, correct, count = env.all_sum(self.sums.clone()).tolist()
        seconds = time.perf_counter() - self.start
        return loss / max(count, 1), 100 * correct / max(count, 1), seconds, count / seconds


def evaluate(model: nn.Module, images: Tensor, labels: Tensor, env: WorkerEnv, prepare, prefix: str = "test",
             batch: int = 1000) -> dict[str, float]:
    """`evaluate_batches` over this worker's strided share of a split held on the device."""
    return evaluate_batches(model, eval_batches(images, labels, env.rank, env.world_size, batch), env, prepare, prefix)


@torch.no_grad()
def evaluate_batches(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], env: WorkerEnv, prepare,
                     prefix: str = "test") -> dict[str, float]:
    """`<prefix>_loss` / `_top1` / `_top5` over this worker's (uint8 image, label) batches, summed over workers."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=env.device)
    for images, y in batches:
        x = prepare(images)
        # no autograd graph: measured ResNet-8, 1,000 images, 1 CPU thread 1.03 s → 0.75 s
        with torch.inference_mode(), env.autocast():
            logits = model(x).float()
        top5 = logits.topk(min(5, logits.shape[1]), 1).indices
        sums += torch.stack([nn.functional.cross_entropy(logits, y, reduction="sum").double(),
                             (top5[:, 0] == y).sum().double(), (top5 == y[:, None]).any(1).sum().double(),
                             torch.tensor(float(len(y)), dtype=torch.float64, device=env.device)])
    loss, top1, top5, count = env.all_sum(sums).tolist()
    model.train(was_training)
    return {f"{prefix}_loss": loss / count, f"{prefix}_top1": 100 * top1 / count, f"{prefix}_top5": 100 * top5 / count}


def due(every: int, epoch: int, last: int) -> bool:
    """Whether 1-based `epoch` gets a periodic job (evaluation, checkpoint) done `every` epochs and at the end."""
    return epoch % every == 0 or epoch == last


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def steps(iterable: Iterator, meter: EpochMeter, env: WorkerEnv, check_every: int = 20) -> Iterator:
    """Yield from `iterable`; every `check_every` items stop early if any worker's loss went non-finite."""
    for i, item in enumerate(iterable):
        if i and i % check_every == 0 and not meter.finite(env):
            return
        yield item
