"""What every worker loop sets up: its settings and environment (rank, device, numerics, collectives), its
data on the device, its model placed there, and its optimizer + schedule with trust-ratio telemetry.

The loop itself (`trainables.epochs`) and its checkpoints (`trainables.checkpoints`) live beside this.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import ray
import torch
import torch.distributed as dist
from torch import Tensor, nn

from optim import build_optimizer, build_scheduler
from optim.allocator import keep_freed_memory
from optim.exclusions import excluded_names
from optim.layerwise import LayerwiseOptimizer
from trainables.batches import BN_SYNC
from trainables.config import TrialConfig
from trainables.data import Dataset, balanced_subset, load_dataset, stratified_split
from trainables.stream import Catalog, StreamedData, build_catalog, is_catalog, streams
from trainables.models import set_bn_group
from trainables.session import Session, TrainSession

# The study's dataset in Ray's object store travels to Ray Train workers inside their loop config, under
# this key (TorchTrainer's loop takes one config argument); one-worker trials get it as an argument.
SHARED_DATA_KEY = "_shared_data"


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
        keep_freed_memory()
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
                 ) -> tuple[TrialConfig, WorkerEnv, Dataset | StreamedData]:
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


def load_data(cfg: TrialConfig, env: WorkerEnv, shared: Any = None) -> Dataset | StreamedData:
    """The dataset's (limited) splits, the validation split held out of the training one: moved whole to
    the worker's device as uint8, or, streamed, as the list of images the worker will read.

    `shared`: the study's decoded dataset in Ray's object store (a reference, or its arrays), read
    zero-copy, or the catalog of a streamed one; without it the dataset is loaded from `data_dir` (decoded
    once into the disk cache), or listed there when it streams (`trainables.stream.streams`).
    """
    arrays = ray.get(shared) if isinstance(shared, ray.ObjectRef) else shared
    if is_catalog(arrays) or arrays is None and streams(cfg.dataset, cfg.data_dir, cfg.data_path):
        return streamed_splits(cfg, Catalog.from_arrays(arrays) if arrays is not None
                               else build_catalog(cfg.dataset, cfg.data_dir, cfg.image_size))
    data = Dataset.from_arrays(arrays) if arrays is not None else load_dataset(cfg.dataset, cfg.data_dir, cfg.image_size)
    train, val, test = trial_splits(cfg, data.train, data.test)
    for split in (train, val, test):
        split.images, split.labels = split.images.to(env.device), split.labels.to(env.device)
    return Dataset(train, test, data.mean, data.std, val)


def trial_splits(cfg: TrialConfig, train, test):
    """(train, val, test) of a trial: `limit` and `test_limit` class-balanced subsets, the validation split held
    out of the training one by `split_seed` — decoded images (`ImageData`) or references (`ImageList`) alike."""
    pool = balanced_subset(train, cfg.limit)
    kept, val = stratified_split(pool, cfg.validation_size(len(pool)), cfg.split_seed)
    return kept, val, balanced_subset(test, cfg.test_limit)


def streamed_splits(cfg: TrialConfig, catalog: Catalog) -> StreamedData:
    """The trial's streamed splits, limited and held out exactly as the in-memory ones."""
    train, val, test = trial_splits(cfg, catalog.train, catalog.test)
    return StreamedData(catalog, train, test, val)


def build_training(cfg: TrialConfig, model: nn.Module, steps_per_epoch: int, epochs: int):
    """Optimizer (with telemetry when layer-wise) and per-step scheduler for `model`."""
    hparams = cfg.optimizer_hyperparameters(steps_per_epoch)
    # the LARS family's exclusions decided per parameter from the model (norm layers, biases, ViT's tokens)
    optimizer = build_optimizer(cfg.optimizer, list(model.named_parameters()), exclude=excluded_names(model), **hparams)
    telemetry = None
    if isinstance(optimizer, LayerwiseOptimizer):
        telemetry = optimizer.enable_telemetry(every=cfg.telemetry_every)
    scheduler = build_scheduler(cfg.scheduler, optimizer, epochs=epochs, steps_per_epoch=steps_per_epoch,
                                warmup_epochs=cfg.warmup_epochs, min_lr_ratio=cfg.min_lr_ratio, power=cfg.poly_power)
    return optimizer, scheduler, telemetry


def parameters_finite(model: nn.Module) -> bool:
    return bool(torch.stack([p.detach().float().abs().max() for p in model.parameters()]).isfinite().all())
