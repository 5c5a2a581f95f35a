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

    def epoch(self, epoch: int) -> Iterator[tuple[int, Tensor]]:
        """(step, this worker's example indices) for every step of `epoch`."""
        order = torch.randperm(self.num_examples, generator=generator(self.seed, epoch))
        for step in range(self.steps):
            yield step, order[step * self.global_batch:(step + 1) * self.global_batch][self.rows]


def eval_indices(num_examples: int, rank: int, world_size: int) -> Tensor:
    """This worker's share of an evaluation set (strided, disjoint, covering every example once)."""
    return torch.arange(rank, num_examples, world_size)
