"""Per-epoch batch order and worker sharding, derived from (seed, epoch) alone.

Every worker computes the same global permutation and takes its own contiguous slice of each global
batch, so shards never overlap, the union of the shards is the global batch a single worker would
see, and a resumed run replays exactly the order it would have had.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, epoch, step, …), stable across processes (unlike hash())."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (int(part) + 0x9E3779B97F4A7C15 + (value << 6) + (value >> 2))) & (2**63 - 1)
    return value


def generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(derived_seed(*parts))


def per_worker_batch(global_batch: int, world_size: int) -> int:
    if global_batch % world_size:
        raise ValueError(f"batch_size: the global batch {global_batch} is not divisible by {world_size} workers")
    return global_batch // world_size


MICRO_AUTO = "auto"  # micro_batch_size: the largest that fits the device (probed once per run)
BN_SYNC = "sync"  # bn_group: SyncBatchNorm over the whole global batch (GPUs, no micro-batching)


def resolve_batching(global_batch: int, world_size: int, micro_batch_size: int | str | None,
                     bn_group: int | str | None, on_gpu: bool = True) -> tuple[int | str, int | str]:
    """(micro_batch_size, bn_group) made explicit for `world_size` workers; ValueError naming the setting.

    Defaults: no micro-batching (the whole per-worker batch) and BatchNorm over each worker's batch
    (plain DDP, as the TVLARS paper's code), written out as numbers so a trial records what ran.
    """
    local = per_worker_batch(global_batch, world_size)
    micro = local if micro_batch_size is None else micro_batch_size
    if micro != MICRO_AUTO and local % micro:
        raise ValueError(f"micro_batch_size: {micro} does not divide the per-worker batch {local} "
                         f"(batch_size {global_batch} / {world_size} workers)")
    if bn_group is None:
        if micro == MICRO_AUTO:
            raise ValueError("bn_group: set it with micro_batch_size=auto (e.g. bn_group=128), so what BatchNorm "
                             "normalises over does not depend on the device's free memory")
        bn_group = micro
    if bn_group == BN_SYNC:
        if micro != local:
            raise ValueError(f"bn_group: 'sync' normalises over the whole global batch, which micro_batch_size={micro} "
                             f"splits; give a number of samples instead (e.g. bn_group={local})")
        if world_size > 1 and not on_gpu:
            raise ValueError("bn_group: 'sync' across workers needs GPUs (torch has no CPU SyncBatchNorm); "
                             f"give a number of samples instead (e.g. bn_group={local})")
    elif micro == MICRO_AUTO and local % bn_group:
        raise ValueError(f"bn_group: {bn_group} does not divide the per-worker batch {local}")
    elif micro != MICRO_AUTO and micro % bn_group:
        raise ValueError(f"bn_group: {bn_group} does not divide the micro-batch {micro} "
                         f"(micro_batch_size, or the per-worker batch {local} without micro-batching)")
    return micro, bn_group


@dataclass(frozen=True)
class Shard:
    """One worker's view of the training set: `steps` global batches per epoch, its rows of each."""

    num_examples: int
    global_batch: int
    rank: int
    world_size: int
    seed: int

    def __post_init__(self) -> None:
        per_worker_batch(self.global_batch, self.world_size)
        if self.global_batch > self.num_examples:
            raise ValueError(f"batch_size: the global batch {self.global_batch} exceeds the "
                             f"{self.num_examples} training examples")

    @property
    def steps(self) -> int:
        """Full global batches per epoch (the last partial batch is dropped, as at large batch it must be)."""
        return self.num_examples // self.global_batch

    @property
    def rows(self) -> slice:
        """This worker's rows within a global batch."""
        local = self.global_batch // self.world_size
        return slice(self.rank * local, (self.rank + 1) * local)

    def epoch(self, epoch: int, device: torch.device | str = "cpu") -> Iterator[tuple[int, Tensor]]:
        """(step, this worker's example indices on `device`) for every step of `epoch`.

        The permutation is drawn on the host (the same on every device) and copied once per epoch, so a
        step indexes device data with device indices (no per-step host-to-device copy)."""
        order = torch.randperm(self.num_examples, generator=generator(self.seed, epoch)).to(device)
        for step in range(self.steps):
            yield step, order[step * self.global_batch:(step + 1) * self.global_batch][self.rows]


def eval_indices(num_examples: int, rank: int, world_size: int) -> Tensor:
    """This worker's share of an evaluation set (strided, disjoint, covering every example once)."""
    return torch.arange(rank, num_examples, world_size)


def eval_batches(images: Tensor, labels: Tensor, rank: int, world_size: int, batch: int = 1000
                 ) -> Iterator[tuple[Tensor, Tensor]]:
    """This worker's share (`eval_indices`) of a split held on a device, in batches of at most `batch`."""
    index = eval_indices(len(labels), rank, world_size).to(labels.device)
    for chunk in index.split(batch):
        yield images[chunk], labels[chunk]
