"""What every worker loop shares: device and data setup, collectives, optimizer + schedule, trust-ratio
telemetry, divergence checks, and epoch checkpoints through Ray's checkpoint API (via a `Session`:
a Ray Train worker, or the Tune trial actor itself for one-worker trials).

A checkpoint directory holds `state.pt` (model, optimizer incl. momentum and the step counter t,
scheduler, next epoch, metric history, stage state), `history.json` (the per-epoch metrics so far)
and `telemetry.parquet` (every recorded step so far). Randomness is derived from (seed, epoch, step, rank) rather than carried as generator state,
so a restarted run replays exactly the batches and augmentations of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
import torch.distributed as dist
from torch import Tensor, nn

from optim import build_optimizer, build_scheduler
from optim.layerwise import LayerwiseOptimizer
from optim.telemetry import TrustRatioTelemetry
from trainables.batches import BN_SYNC, derived_seed, eval_indices
from trainables.config import TrialConfig
from trainables.data import Dataset, balanced_subset, load_dataset, stratified_split
from trainables.models import set_bn_group
from trainables.safe_load import load_plain
from trainables.session import Session, TrainSession

STATE_FILE, TELEMETRY_FILE, HISTORY_FILE = "state.pt", "telemetry.parquet", "history.json"
# Test-only fault injection through the environment (a local Ray's workers inherit the driver's; Train
# workers also take `worker_env` from `build_trainer`): see `inject_faults`.
FAULT_ENV = "LAYERWISE_FAULT"
# The study's dataset in Ray's object store travels to Ray Train workers inside their loop config, under
# this key (TorchTrainer's loop takes one config argument); one-worker trials get it as an argument.
SHARED_DATA_KEY = "_shared_data"
NODE_KEY = "node_id"  # the Ray node an attempt ran on (rank 0's), in its first report


@dataclass
class WorkerEnv:
    """Rank, world size, device and numeric settings of this worker."""

    rank: int
    world_size: int
    device: torch.device
    autocast_dtype: torch.dtype | None
    session: Session

    @classmethod
    def create(cls, cfg: TrialConfig, session: Session | None = None) -> "WorkerEnv":
        session = session or TrainSession.create()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        device = session.device(cfg.device)
        if device.type == "cuda":  # fixed shapes every step: let cuDNN pick its fastest convolutions once
            torch.backends.cudnn.benchmark = True
        bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
        return cls(session.rank, session.world_size, device, torch.bfloat16 if bf16 else None, session)

    def prepare(self, module: nn.Module) -> nn.Module:
        """DDP (Ray's prepare_model) across several workers; the module itself on one."""
        if self.world_size == 1:
            return module
        import ray.train.torch

        return ray.train.torch.prepare_model(module)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def all_sum(self, values: Tensor) -> Tensor:
        """Sum a tensor over workers (no-op on one worker)."""
        if self.world_size > 1:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def memory_format(self) -> torch.memory_format:
        # channels_last: faster convolutions on GPU tensor cores and on CPU oneDNN (measured 1.7× on
        # this repository's 2-core CI machine for the small ResNet).
        return torch.channels_last


def start_worker(config: dict[str, Any], session: Session | None, shared_data: Any
                 ) -> tuple[TrialConfig, WorkerEnv, Dataset]:
    """A loop's start: its settings, its worker environment, and its data on the device.

    `shared_data` is the study's dataset in Ray's object store; a Ray Train worker finds it in its config.
    """
    config = dict(config)
    shared_data = config.pop(SHARED_DATA_KEY, shared_data)
    cfg = TrialConfig.from_dict(config, check_data=shared_data is None)  # a node may lack the driver's data folder
    env = WorkerEnv.create(cfg, session)
    return cfg, env, load_data(cfg, env, shared_data)


def place_model(model: nn.Module, env: WorkerEnv, bn_group: int | str | None = None) -> nn.Module:
    """Move to the device in channels_last, BatchNorm over `bn_group` samples (SyncBatchNorm for 'sync')."""
    if bn_group == BN_SYNC and env.world_size > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif isinstance(bn_group, int):
        set_bn_group(model, bn_group)
    return model.to(env.device, memory_format=env.memory_format())


def load_data(cfg: TrialConfig, env: WorkerEnv, shared: Any = None) -> Dataset:
    """The dataset's (limited) splits, the validation split held out of the training one, moved whole to
    the worker's device as uint8.

    `shared`: the study's decoded dataset in Ray's object store (a reference, or its arrays), read
    zero-copy; without it the dataset is loaded from `data_dir` (decoded once into the disk cache).
    """
    if shared is not None:
        data = Dataset.from_arrays(ray.get(shared) if isinstance(shared, ray.ObjectRef) else shared)
    else:
        data = load_dataset(cfg.dataset, cfg.data_dir, cfg.image_size)
    pool = balanced_subset(data.train, cfg.limit)
    train, val = stratified_split(pool, cfg.validation_size(len(pool)), cfg.split_seed)
    test = balanced_subset(data.test, cfg.test_limit)
    for split in (train, val, test):
        split.images, split.labels = split.images.to(env.device), split.labels.to(env.device)
    return Dataset(train, test, data.mean, data.std, val)


def build_training(cfg: TrialConfig, model: nn.Module, steps_per_epoch: int, epochs: int):
    """Optimizer (with telemetry when layer-wise) and per-step scheduler for `model`."""
    hparams = cfg.optimizer_hyperparameters(steps_per_epoch)
    optimizer = build_optimizer(cfg.optimizer, list(model.named_parameters()), **hparams)
    telemetry = None
    if isinstance(optimizer, LayerwiseOptimizer):
        telemetry = optimizer.enable_telemetry(every=cfg.telemetry_every)
    scheduler = build_scheduler(cfg.scheduler, optimizer, epochs=epochs, steps_per_epoch=steps_per_epoch,
                                warmup_epochs=cfg.warmup_epochs, min_lr_ratio=cfg.min_lr_ratio, power=cfg.poly_power)
    return optimizer, scheduler, telemetry


def parameters_finite(model: nn.Module) -> bool:
    return bool(torch.stack([p.detach().float().abs().max() for p in model.parameters()]).isfinite().all())


@dataclass
class RunState:
    """Everything that carries over between epochs and survives a restart."""

    next_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    telemetry: list[pa.Table] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    resumed_from: int = 0  # epoch this attempt started at (not saved)
    setup_seconds: float | None = None  # loop entry to first epoch (data, model, restore); reported once

    def add_telemetry(self, telemetry: TrustRatioTelemetry | None, epoch: int) -> dict[str, float]:
        """Collect and store one epoch's telemetry; return the trust-ratio summary over layers (per-layer epoch mean)."""
        # `is None`, not truthiness: an epoch that recorded no step has len(telemetry) == 0
        batch = telemetry.collect() if telemetry is not None else None
        if batch is None or len(batch.steps) == 0:
            return {}
        table = batch.to_arrow()
        self.telemetry.append(table.append_column("epoch", pa.array([epoch] * table.num_rows, pa.int32())))
        per_layer = batch.rho.nanmean(0)
        per_layer = per_layer[per_layer.isfinite()]
        if per_layer.numel() == 0:
            return {"trust_ratio_median": math.nan, "trust_ratio_min": math.nan, "trust_ratio_max": math.nan}
        return {"trust_ratio_median": per_layer.median().item(), "trust_ratio_min": per_layer.min().item(),
                "trust_ratio_max": per_layer.max().item()}


def restore(modules: dict[str, Any], env: WorkerEnv) -> RunState:
    """Load the latest Ray checkpoint (if any) into `modules` (name → object with load_state_dict)."""
    device = env.device
    checkpoint = env.session.checkpoint()
    if checkpoint is None:
        return RunState()
    with checkpoint.as_directory() as directory:  # (a bucket's checkpoint arrives as a local copy)
        saved = load_plain(Path(directory) / STATE_FILE, f"{checkpoint.path}/{STATE_FILE}", map_location=device)
        tables = []
        if (Path(directory) / TELEMETRY_FILE).is_file():
            tables = [pq.read_table(Path(directory) / TELEMETRY_FILE)]
    for name, module in modules.items():
        if name in saved["modules"]:
            module.load_state_dict(saved["modules"][name])
    extra = {**saved["extra"], "restarts": saved["extra"].get("restarts", 0) + 1}
    return RunState(saved["next_epoch"], saved["history"], tables, extra, resumed_from=saved["next_epoch"])


def save_checkpoint(directory: Path, modules: dict[str, Any], state: RunState, cfg: TrialConfig) -> None:
    """The epoch's checkpoint files: `state.pt`, `history.json` and (when recorded) `telemetry.parquet`."""
    torch.save({"modules": {k: m.state_dict() for k, m in modules.items()}, "next_epoch": state.next_epoch,
                "history": state.history, "extra": state.extra, "config": cfg.to_dict()}, directory / STATE_FILE)
    (directory / HISTORY_FILE).write_text(json.dumps(state.history, default=str))
    if state.telemetry:
        table = pa.concat_tables(state.telemetry)
        pq.write_table(table, directory / TELEMETRY_FILE)
        state.telemetry = [table]


def report(env: WorkerEnv, state: RunState, metrics: dict[str, Any], modules: dict[str, Any] | None,
           cfg: TrialConfig) -> None:
    """Report the epoch's metrics; with `modules`, rank 0 also saves the epoch's checkpoint."""
    metrics["restarts"] = state.extra.get("restarts", 0)  # times this run resumed from a checkpoint
    if state.setup_seconds is not None:  # the first report of this attempt: its start-up cost in the loop, its node
        metrics["setup_seconds"], state.setup_seconds = state.setup_seconds, None
        if ray.is_initialized():  # (a loop run outside Ray, as in tests, has no node)
            metrics[NODE_KEY] = ray.get_runtime_context().get_node_id()
    state.history.append(metrics)
    name = f"epoch_{state.next_epoch:04d}"
    if modules is None or env.rank != 0:
        env.session.report(metrics, None, name)
        return
    with tempfile.TemporaryDirectory() as directory:
        save_checkpoint(Path(directory), modules, state, cfg)
        env.session.report(metrics, directory, name)


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
                   "status": "diverged" if diverged else ("completed" if epoch + 1 == total else "running")}
        due_now = not diverged and due(cfg.checkpoint_every, epoch + 1, total)
        report(env, state, metrics, modules if due_now else None, cfg)
        inject_faults(env, state)
        if diverged:
            break
    return state.history


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


@torch.no_grad()
def evaluate(model: nn.Module, images: Tensor, labels: Tensor, env: WorkerEnv, prepare, prefix: str = "test",
             batch: int = 1000) -> dict[str, float]:
    """`<prefix>_loss` / `_top1` / `_top5` of one split over this worker's strided share, summed over workers."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=env.device)
    index = eval_indices(len(labels), env.rank, env.world_size).to(env.device)
    for chunk in index.split(batch):
        x, y = prepare(images[chunk]), labels[chunk]
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
