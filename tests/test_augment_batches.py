"""Batched augmentation and worker sharding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainables.augment import crop_flip, sample_crop_flip, sample_view, take, view
from trainables.batches import Shard, eval_indices, generator


def test_crop_flip_matches_per_image_reference():
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    params = sample_crop_flip(6, generator(0))
    out = crop_flip(images, params)
    for i in range(6):
        dy, dx = int(params["dy"][i]), int(params["dx"][i])
        ref = F.pad(images[i], (4, 4, 4, 4))[:, dy:dy + 8, dx:dx + 8]
        if params["flip"][i]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref)


def test_view_identity_parameters_return_the_image():
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    ones, zeros = torch.ones(3), torch.zeros(3)
    params = {"w": ones, "h": ones, "cx": ones / 2, "cy": ones / 2, "flip": zeros.bool(), "brightness": ones,
              "contrast": ones, "saturation": ones, "hue": zeros, "gray": zeros.bool()}
    assert torch.allclose(view(images, params, 8), images.float() / 255, atol=1e-5)
    flipped = view(images, {**params, "flip": ones.bool(), "gray": ones.bool()}, 8)
    assert torch.allclose(flipped[:, 0], flipped[:, 1]) and flipped.shape == (3, 3, 8, 8)


def test_views_are_random_per_sample_and_in_range():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    out = view(images, sample_view(16, generator(1)), 32)
    assert out.shape == (16, 3, 32, 32) and 0 <= out.min() and out.max() <= 1
    assert not torch.allclose(out, view(images, sample_view(16, generator(2)), 32))


def test_worker_slices_of_one_draw_equal_the_global_augmentation():
    images = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8)
    params = sample_view(8, generator(3))
    whole = view(images, params, 8)
    halves = [view(images[s], take(params, s), 8) for s in (slice(0, 4), slice(4, 8))]
    assert torch.allclose(torch.cat(halves), whole, atol=1e-6)


def test_shards_partition_each_global_batch():
    one = Shard(100, 20, 0, 1, seed=5)
    two = [Shard(100, 20, r, 2, seed=5) for r in range(2)]
    for (s, whole), (_, a), (_, b) in zip(one.epoch(3), two[0].epoch(3), two[1].epoch(3)):
        assert torch.equal(torch.cat([a, b]), whole) and len(set(a.tolist()) & set(b.tolist())) == 0
    assert one.steps == 5
    seen = torch.cat([idx for _, idx in one.epoch(0)])
    assert sorted(seen.tolist()) == list(range(100))
    assert not torch.equal(next(one.epoch(0))[1], next(one.epoch(1))[1])


def test_shard_errors_and_eval_split():
    with pytest.raises(ValueError, match="batch_size: the global batch 30 is not divisible by 4 workers"):
        Shard(100, 30, 0, 4, seed=0)
    with pytest.raises(ValueError, match="batch_size: the global batch 200 exceeds the 100 training examples"):
        Shard(100, 200, 0, 1, seed=0)
    parts = [eval_indices(10, r, 3) for r in range(3)]
    assert sorted(torch.cat(parts).tolist()) == list(range(10))
