"""Ray Train worker loop for supervised classification (`task="clf"`).

One call trains one configuration on this worker's shard: per epoch it reports train loss/top-1,
test loss/top-1/top-5, lr, the trust-ratio summary, epoch seconds and images/s, and checkpoints.
A non-finite loss or parameter, or a train loss above `divergence_factor`·ln(classes), ends the run
with `status="diverged"` instead of an exception.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch
from torch import Tensor, nn

from optim import per_sample_grad_norms
from optim.clars import CLARS, microbatch_grad_norms
from trainables.augment import crop_flip, normalize, sample_crop_flip, take
from trainables.batches import Shard, derived_seed, generator
from trainables.config import TrialConfig
from trainables.models import build_model
from trainables.session import Session
from trainables.worker import (
    EpochMeter,
    WorkerEnv,
    build_training,
    current_lr,
    evaluate,
    parameters_finite,
    place_model,
    report,
    restore,
    start_worker,
    steps,
)

AUGMENT_STREAM = 1  # generator stream id for augmentation draws (the batch order uses the bare (seed, epoch))


def input_pipeline(mean: tuple, std: tuple, env: WorkerEnv) -> Callable[[Tensor], Tensor]:
    """uint8 batch → normalised float batch in the model's memory format."""
    mean_t, std_t = torch.tensor(mean, device=env.device), torch.tensor(std, device=env.device)
    return lambda x: normalize(x, mean_t, std_t).contiguous(memory_format=env.memory_format())


def clars_norms(cfg: TrialConfig, model: nn.Module, loss_fn, x: Tensor, y: Tensor, env: WorkerEnv) -> list[Tensor]:
    """CLARS' (1/B)·Σᵢ‖∇fᵢ‖ per parameter over the global batch (local means averaged over workers)."""
    if cfg.clars_norms == "exact":
        norms = per_sample_grad_norms(model, loss_fn, x, y)
    else:
        norms = microbatch_grad_norms(model, loss_fn, x, y, min(cfg.clars_microbatches, x.shape[0]))
    stacked = env.all_sum(torch.stack(norms).detach()) / env.world_size
    return list(stacked.unbind())


def train_classifier(config: dict[str, Any], session: Session | None = None, shared_data: Any = None
                     ) -> list[dict[str, Any]]:
    """Train and evaluate one configuration; returns the metric history.

    TorchTrainer's `train_loop_per_worker`, or called in a one-worker trial's Tune actor with a `TuneSession`."""
    entered = time.perf_counter()
    cfg, env, data = start_worker(config, session, shared_data)
    shard = Shard(len(data.train), cfg.batch_size, env.rank, env.world_size, cfg.seed)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.num_classes, data.image_size, init=cfg.init, width=cfg.width)
    model = place_model(model, env)
    optimizer, scheduler, telemetry = build_training(cfg, model, shard.steps, cfg.epochs)
    modules = {"model": model, "optimizer": optimizer, "scheduler": scheduler}
    state = restore(modules, env)
    network = env.prepare(model)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    prepare = input_pipeline(data.mean, data.std, env)

    state.setup_seconds = time.perf_counter() - entered
    for epoch in range(state.next_epoch, cfg.epochs):
        torch.manual_seed(derived_seed(cfg.seed, epoch, env.rank))
        model.train()
        meter = EpochMeter(env.device)
        for step, index in steps(shard.epoch(epoch), meter, env):
            draws = take(sample_crop_flip(cfg.batch_size, generator(cfg.seed, epoch, step, AUGMENT_STREAM)), shard.rows)
            x, y = prepare(crop_flip(data.train.images[index], draws)), data.train.labels[index]
            with env.autocast():
                logits = network(x)
                loss = loss_fn(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if isinstance(optimizer, CLARS):
                optimizer.set_per_sample_grad_norms(model.parameters(), clars_norms(cfg, model, loss_fn, x, y, env))
            optimizer.step()
            scheduler.step()
            meter.add(loss, logits, y)
        train_loss, train_top1, seconds, images_per_second = meter.result(env)
        # Diverged: non-finite, or a loss far above a uniform guess's ln(C) (LARS at lr 1e4 keeps finite
        # weights through batch norm's scale invariance while its loss is in the tens of thousands).
        exploded = train_loss > cfg.divergence_factor * math.log(data.num_classes)
        diverged = exploded or not (meter.finite(env) and parameters_finite(model))
        state.next_epoch = epoch + 1
        metrics = {
            "epoch": epoch + 1, "train_loss": train_loss, "train_top1": train_top1,
            **evaluate(model, data.test.images, data.test.labels, env, prepare),
            "lr": current_lr(optimizer), **state.add_telemetry(telemetry and telemetry.collect(), epoch + 1),
            "epoch_seconds": seconds, "images_per_second": images_per_second,
            "status": "diverged" if diverged else ("completed" if epoch + 1 == cfg.epochs else "running"),
        }
        report(env, state, metrics, None if diverged else modules, cfg)
        if diverged:
            break
    return state.history
