"""A study puts in Ray's object store only the images its trials read (`study.run.trials_share`), and every trial's
splits drawn from those are the splits it would draw from the whole dataset."""

from __future__ import annotations

import torch

from study.plan import make_plan
from study.run import trials_share
from trainables.data import Dataset, ImageData
from trainables.worker import trial_splits

CLASSES = [f"class{i}" for i in range(10)]


def synthetic(train: int, test: int) -> Dataset:
    """Distinct images (each one's first pixel is its index) with labels in no class order."""
    def split(n: int, seed: int) -> ImageData:
        images = torch.zeros(n, 3, 4, 4, dtype=torch.uint8)
        images.view(n, -1)[:, :2] = torch.stack([torch.arange(n) % 256, torch.arange(n) // 256], 1).to(torch.uint8)
        labels = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(seed))
        return ImageData(images, labels, CLASSES)

    return Dataset(split(train, 1), split(test, 2), (0.5,) * 3, (0.25,) * 3)


def test_the_demo_places_its_limits_and_every_trial_draws_the_same_splits():
    plan = make_plan("demo", {"limit": 900, "test_limit": 250, "val_size": 90})
    data = synthetic(3000, 1000)
    placed = trials_share(plan, data)
    assert (len(placed.train), len(placed.test)) == (900, 250)
    assert placed.mean == data.mean and placed.std == data.std
    for draw in plan.space.corner_draws(frozenset(plan.overrides)):
        cfg = plan.trial_config(draw)
        for seed in (0, 7):  # the search's split seed, and another a confirm trial may draw
            cfg.split_seed = seed
            for ours, whole in zip(trial_splits(cfg, placed.train, placed.test), trial_splits(cfg, data.train, data.test)):
                assert torch.equal(ours.images, whole.images) and torch.equal(ours.labels, whole.labels)


def test_a_study_that_reads_every_image_places_the_dataset_itself():
    plan = make_plan("demo", {"limit": None, "test_limit": None, "val_size": 90})
    data = synthetic(600, 200)
    assert trials_share(plan, data) is data
