"""The classification loop in one process (no Ray): evaluation and checkpoints every N epochs, and a
micro-batched epoch that trains exactly like the whole-batch epoch at the same BatchNorm groups."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from search_spaces.demo import DEMO

from study.plan import make_plan
from trainables.classification import train_classifier
from trainables.records import STATE_FILE


class RecordingSession:
    """A one-worker session that keeps every report and whether it carried a checkpoint."""

    rank, world_size = 0, 1

    def __init__(self):
        self.reports: list[tuple[dict, bool]] = []
        self.model_keys: list[str] = []  # the model's state-dict names in the last checkpoint

    def device(self, wanted: str) -> torch.device:
        return torch.device("cpu")

    def checkpoint(self):
        return None

    def report(self, metrics: dict, directory: str | None, name: str) -> None:
        saved = directory is not None and (Path(directory) / STATE_FILE).is_file()
        self.reports.append((dict(metrics), saved))
        if saved:
            self.model_keys = list(torch.load(Path(directory) / STATE_FILE, weights_only=True)["modules"]["model"])

    def wait_for_checkpoints(self) -> None:
        pass


def _settings(cifar10_dir: str, **overrides) -> dict:
    return {**dict(dataset="cifar10", data_dir=cifar10_dir, model="resnet8", width=8, limit=400, val_size=0, test_limit=200,
                   optimizer="lars", lr=1.0, momentum=0.9, weight_decay=5e-4, batch_size=200, epochs=3,
                   warmup_epochs=1, seed=5, threads=2), **overrides}


def _run(settings: dict) -> RecordingSession:
    session = RecordingSession()
    train_classifier(settings, session=session)
    return session


def test_evaluation_and_checkpoints_every_n_epochs_and_at_the_end(cifar10_dir, data_cache):
    session = _run(_settings(cifar10_dir, eval_every=2, checkpoint_every=2))
    evaluated = [m["epoch"] for m, _ in session.reports if "test_top1" in m]
    saved = [m["epoch"] for m, checkpoint in session.reports if checkpoint]
    assert [m["epoch"] for m, _ in session.reports] == [1, 2, 3]
    assert evaluated == [2, 3] and saved == [2, 3]
    assert all(math.isfinite(m["train_loss"]) for m, _ in session.reports)


def test_a_compiled_network_trains_like_the_eager_one(cifar10_dir, data_cache):
    """`compile=true` runs the step through torch.compile (inductor, C++ on the CPU) and checkpoints the plain
    model's state (no `_orig_mod.` names)."""
    one_epoch = dict(epochs=1, warmup_epochs=0)
    (eager, _), = _run(_settings(cifar10_dir, **one_epoch)).reports
    session = _run(_settings(cifar10_dir, **one_epoch, compile=True))
    (compiled, saved), = session.reports
    assert saved and session.model_keys and not any("_orig_mod" in key for key in session.model_keys)
    for key in ("train_loss", "test_loss"):  # compiled kernels may sum in another order
        assert compiled[key] == pytest.approx(eager[key], rel=1e-3), key


def test_a_micro_batched_epoch_equals_the_whole_batch_epoch(cifar10_dir, data_cache):
    # one epoch (2 steps): LARS at lr 1 on a fresh network amplifies summation-order differences
    # step by step (measured: test loss 1.6e-6 apart after 2 steps, 5e-5 after 4)
    one_epoch = dict(epochs=1, warmup_epochs=0, bn_group=50)
    (whole, _), = _run(_settings(cifar10_dir, **one_epoch)).reports
    (micro, _), = _run(_settings(cifar10_dir, **one_epoch, micro_batch_size=50)).reports
    for key in ("train_loss", "train_top1", "test_loss", "test_top1", "trust_ratio_median"):
        assert micro[key] == pytest.approx(whole[key], rel=1e-5), key
    (different, _), = _run(_settings(cifar10_dir, **{**one_epoch, "bn_group": 200})).reports  # another experiment
    assert different["test_loss"] != pytest.approx(whole["test_loss"], rel=1e-4)


@pytest.mark.parametrize("sets, message", [
    ({"eval_every": 4}, "eval_every: ASHA compares trials at epoch 2 .* eval_every=4 must divide 2"),
    ({"micro_batch_size": 7}, f"micro_batch_size: 7 does not divide the per-worker batch {DEMO.fixed['batch_size']}"),
    ({"bn_group": "sync"}, "bn_group: 'sync' across workers needs GPUs|bn_group"),
])
def test_study_settings_are_checked_before_the_study(sets, message):
    if sets.get("bn_group") == "sync":  # one CPU worker: 'sync' is simply the whole batch
        plan = make_plan("demo", dict(sets), data_dir="/nonexistent")
        assert plan.shared().bn_group == "sync"
        return
    with pytest.raises(ValueError, match=message):
        make_plan("demo", dict(sets), data_dir="/nonexistent")


def test_a_study_trial_records_its_batching_as_numbers():
    half = DEMO.fixed["batch_size"] // 2
    settings = make_plan("demo", {"micro_batch_size": half}, data_dir="/nonexistent").shared()
    assert (settings.micro_batch_size, settings.bn_group) == (half, half)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
def test_an_epoch_of_steps_never_waits_on_the_host(device, cifar10_dir, data_cache):
    """The loop's step — device indices, epoch-wide draws, augmentation, micro-batched forward/backward,
    the optimizer with telemetry, the epoch meter — under CUDA's sync debug mode "error" where CUDA exists."""
    from trainables.augment import crop_flip, epoch_draws, sample_crop_flip
    from trainables.batches import Shard, generator
    from trainables.classification import AUGMENT_STREAM, input_pipeline, train_step
    from trainables.config import TrialConfig
    from trainables.data import balanced_subset, load_dataset
    from trainables.models import build_model
    from trainables.epochs import EpochMeter
    from trainables.worker import WorkerEnv, build_training, place_model

    cfg = TrialConfig.from_dict(_settings(cifar10_dir, epochs=1, warmup_epochs=0, micro_batch_size=100, bn_group=50))
    env = WorkerEnv(0, 1, torch.device(device), None, RecordingSession())
    data = load_dataset(cfg.dataset, cfg.data_dir)
    train = balanced_subset(data.train, cfg.limit)
    images, labels = train.images.to(device), train.labels.to(device)
    model = place_model(build_model(cfg.model, 10, 32, width=cfg.width), env, 50)
    optimizer, scheduler, telemetry = build_training(cfg, model, 2, 1)
    shard, prepare, loss_fn = Shard(len(labels), cfg.batch_size, 0, 1, cfg.seed), input_pipeline(data.mean, data.std, env), torch.nn.CrossEntropyLoss()
    meter = EpochMeter(env.device)
    draws = epoch_draws(lambda step: sample_crop_flip(cfg.batch_size, generator(cfg.seed, 0, step, AUGMENT_STREAM)),
                        shard.steps, shard.rows, env.device)
    steps = list(shard.epoch(0, env.device))
    if device == "cuda":
        torch.cuda.set_sync_debug_mode("error")
    try:
        for step, index in steps:
            x, y = prepare(crop_flip(images[index], draws[step])), labels[index]
            loss, logits = train_step(cfg, env, model, model, optimizer, loss_fn, x, y, 100)
            scheduler.step()
            meter.add(loss, logits, y)
    finally:
        if device == "cuda":
            torch.cuda.set_sync_debug_mode(0)
    train_loss, _, _, images_per_second = meter.result(env)
    assert math.isfinite(train_loss) and images_per_second > 0 and len(telemetry) == shard.steps
