"""A classification worker's batches, wherever its data lives: decoded in memory on the device (`MemoryFeed`)
or streamed from files by the trial's own decode processes (`StreamedFeed`). Both give the same epoch: one
order per (seed, epoch), this worker's rows of each global batch, CIFAR-style crop + flip drawn per global
batch — a folder streamed trains on the very batches the object-store path would give it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from trainables.augment import crop_flip, epoch_draws, sample_crop_flip
from trainables.batches import Shard, eval_batches, generator
from trainables.data import Dataset, ImageData
from trainables.records import DATA_WAIT_KEY
from trainables.stream import StreamFeed

DECODE_PROCESSES_KEY = "decode_processes"  # a streamed trial's DataLoader processes per worker (its CPUs but one)
AUGMENT_STREAM = 1  # generator stream id for augmentation draws (the batch order uses the bare (seed, epoch))


def crop_flip_draws(shard: Shard, seed: int, epoch: int, device: torch.device) -> list[dict[str, Tensor]]:
    """Every step's pad-crop/flip draws of `epoch` for this worker's rows, on `device`."""
    return epoch_draws(lambda step: sample_crop_flip(shard.global_batch, generator(seed, epoch, step, AUGMENT_STREAM)),
                       shard.steps, shard.rows, device)


@dataclass
class MemoryFeed:
    """Batches indexed from the splits held on the device."""

    data: Dataset
    shard: Shard
    seed: int
    device: torch.device

    def epoch(self, epoch: int) -> Iterator[tuple[int, Tensor, Tensor]]:
        draws = crop_flip_draws(self.shard, self.seed, epoch, self.device)
        for step, index in self.shard.epoch(epoch, self.device):
            yield step, crop_flip(self.data.train.images[index], draws[step]), self.data.train.labels[index]

    def evaluation(self, prefix: str, batch: int = 1000) -> Iterator[tuple[Tensor, Tensor]]:
        split: ImageData = self.data.val if prefix == "val" else self.data.test
        return eval_batches(split.images, split.labels, self.shard.rank, self.shard.world_size, batch)

    def has(self, prefix: str) -> bool:
        split = self.data.val if prefix == "val" else self.data.test
        return split is not None and len(split) > 0

    def epoch_metrics(self) -> dict[str, Any]:
        return {}


@dataclass
class StreamedFeed:
    """Batches decoded from files every epoch; ImageNet's are augmented as decoded, others like `MemoryFeed`."""

    stream: StreamFeed
    seed: int

    def epoch(self, epoch: int) -> Iterator[tuple[int, Tensor, Tensor]]:
        pad_crop = self.stream.catalog.augment == "crop_flip"
        draws = crop_flip_draws(self.stream.shard, self.seed, epoch, self.stream.device) if pad_crop else None
        for step, images, labels, _ in self.stream.epoch(epoch):
            yield step, crop_flip(images, draws[step]) if pad_crop else images, labels

    def evaluation(self, prefix: str) -> Iterator[tuple[Tensor, Tensor]]:
        return self.stream.evaluation(prefix)

    def has(self, prefix: str) -> bool:
        return prefix in self.stream.splits and len(self.stream.splits[prefix]) > 0

    def epoch_metrics(self) -> dict[str, Any]:
        """How much of the last training epoch waited on decoding (0: the decode processes kept up)."""
        return {DATA_WAIT_KEY: self.stream.train_wait_share, DECODE_PROCESSES_KEY: self.stream.workers}
