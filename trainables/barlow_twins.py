"""Ray Train worker loop for Barlow Twins (`task="bt"`): pretext epochs, then linear evaluation.

Pretext: two augmented views → backbone → projector (Linear-BN-ReLU …, last Linear) → batch-normalised
embeddings; loss Σ(1 − C_ii)² + λ_BT Σ_{i≠j} C_ij² with C the cross-correlation over the global
batch (all-reduced, differentiably, across workers). The chosen optimizer and schedule train the
backbone + projector. Linear evaluation: frozen backbone, a linear classifier (after a parameter-free
BatchNorm) trained with SGD + cosine at `linear_lr` on crop-and-flip inputs; its validation top-1 is what a
study selects on, its test top-1 the trial's result. Both stages train on the images the validation split leaves.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed.nn.functional as dist_fn
from torch import Tensor, nn
from torch.optim.lr_scheduler import CosineAnnealingLR

from trainables.augment import crop_flip, normalize, sample_crop_flip, sample_view, take, view
from trainables.batches import BN_SYNC, Shard, generator
from trainables.classification import AUGMENT_STREAM, input_pipeline
from trainables.models import build_model, split_head
from trainables.session import Session
from trainables.checkpoints import restore
from trainables.epochs import EpochMeter, Epochs, current_lr, evaluate, run_epochs, steps
from trainables.worker import build_training, place_model, start_worker

VIEW_STREAMS = (2, 3)


def projector(in_dim: int, spec: str) -> nn.Sequential:
    """Barlow Twins projector from widths like '4096-4096-4096'."""
    widths = [in_dim] + [int(w) for w in spec.split("-")]
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-2], widths[1:-1]):
        layers += [nn.Linear(a, b, bias=False), nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(widths[-2], widths[-1], bias=False))
    return nn.Sequential(*layers)


class BarlowTwins(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, projector_spec: str):
        super().__init__()
        self.backbone = backbone
        self.projector = projector(feature_dim, projector_spec)
        self.embed_norm = nn.BatchNorm1d(self.projector[-1].out_features, affine=False)

    def forward(self, view1: Tensor, view2: Tensor) -> tuple[Tensor, Tensor]:
        return (self.embed_norm(self.projector(self.backbone(view1))).float(),
                self.embed_norm(self.projector(self.backbone(view2))).float())


def barlow_twins_loss(z1: Tensor, z2: Tensor, lambd: float, global_batch: int, world_size: int) -> Tensor:
    """Σ(1 − C_ii)² + λ Σ_{i≠j} C_ij², C = z1ᵀz2 / global batch summed over workers.

    The all-reduce is autograd-aware: its backward sums ∂L/∂C over workers, which DDP's gradient
    averaging divides back, so every worker's update is the gradient of the global loss.
    """
    c = z1.T @ z2 / global_batch
    if world_size > 1:
        c = dist_fn.all_reduce(c)
    diagonal = torch.diagonal(c)
    on_diag = (diagonal - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - diagonal.pow(2).sum()
    return on_diag + lambd * off_diag


def linear_probe(feature_dim: int, num_classes: int) -> nn.Sequential:
    """The linear-evaluation head: BatchNorm without affine parameters, then a linear layer (MoCo v3 / MAE).

    Without the normalisation the probe's stable lr depends on the frozen features' scale, which the
    pretext optimizer sets: after 2 LARS epochs (lr 1.0) a bare linear head at lr 0.05 diverged
    (train loss 43 → 158, test top-1 10% = chance). momentum=None: running statistics are the exact
    mean over the probe's steps, which are few in short trials.
    """
    return nn.Sequential(nn.BatchNorm1d(feature_dim, affine=False, momentum=None), nn.Linear(feature_dim, num_classes))


def train_barlow_twins(config: dict[str, Any], session: Session | None = None, shared_data: Any = None
                       ) -> list[dict[str, Any]]:
    """Barlow Twins pretext, then linear evaluation; one report per epoch, returns the history.

    TorchTrainer's `train_loop_per_worker`, or called in a one-worker trial's Tune actor with a `TuneSession`."""
    entered = time.perf_counter()
    cfg, env, data = start_worker(config, session, shared_data)
    shard = Shard(len(data.train), cfg.batch_size, env.rank, env.world_size, cfg.seed)
    linear_shard = Shard(len(data.train), cfg.linear_batch_size or cfg.batch_size, env.rank, env.world_size, cfg.seed)
    torch.manual_seed(cfg.seed)
    backbone, feature_dim = split_head(build_model(cfg.model, data.num_classes, data.image_size,
                                                   init=cfg.init, width=cfg.width))
    # SyncBatchNorm across GPUs: the Barlow Twins loss is defined over the global batch (as in its authors' code)
    model = place_model(BarlowTwins(backbone, feature_dim, cfg.bt_projector), env, BN_SYNC)
    optimizer, scheduler, telemetry = build_training(cfg, model, shard.steps, cfg.epochs)
    classifier = linear_probe(feature_dim, data.num_classes).to(env.device)
    linear_opt = torch.optim.SGD(classifier.parameters(), lr=cfg.linear_lr, momentum=0.9, weight_decay=1e-6)
    linear_sched = CosineAnnealingLR(linear_opt, T_max=cfg.linear_epochs * linear_shard.steps)
    modules = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "classifier": classifier,
               "linear_optimizer": linear_opt, "linear_scheduler": linear_sched}
    state = restore(modules, env)
    network = env.prepare(model)
    head = env.prepare(classifier)
    mean_t, std_t = torch.tensor(data.mean, device=env.device), torch.tensor(data.std, device=env.device)
    prepare = input_pipeline(data.mean, data.std, env)

    def pretext(epoch: int) -> bool:
        return epoch < cfg.epochs

    def train_pretext(epoch: int, meter: EpochMeter) -> None:
        model.train()
        for step, index in steps(shard.epoch(epoch, env.device), meter, env):
            images = data.train.images[index]
            v1, v2 = (normalize(view(images, take(sample_view(cfg.batch_size, generator(cfg.seed, epoch, step, s)),
                                                    shard.rows), data.image_size), mean_t, std_t)
                      .contiguous(memory_format=env.memory_format()) for s in VIEW_STREAMS)
            with env.autocast():
                z1, z2 = network(v1, v2)
            loss = barlow_twins_loss(z1, z2, cfg.bt_lambda, cfg.batch_size, env.world_size)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            meter.add(loss, None, index)

    def train_linear(epoch: int, meter: EpochMeter) -> None:
        model.eval()
        classifier.train()  # evaluation left it in eval mode
        for step, index in steps(linear_shard.epoch(epoch, env.device), meter, env):
            draws = take(sample_crop_flip(linear_shard.global_batch, generator(cfg.seed, epoch, step, AUGMENT_STREAM)),
                         linear_shard.rows)
            with torch.no_grad(), env.autocast():
                features = model.backbone(prepare(crop_flip(data.train.images[index], draws))).float()
            y = data.train.labels[index]
            logits = head(features)
            loss = nn.functional.cross_entropy(logits, y)
            linear_opt.zero_grad(set_to_none=True)
            loss.backward()
            linear_opt.step()
            linear_sched.step()
            meter.add(loss, logits, y)

    def evaluate_epoch(epoch: int) -> dict[str, Any]:
        if pretext(epoch):
            return {"stage": "pretext", "lr": current_lr(optimizer)}
        classify = nn.Sequential(model.backbone, classifier)
        evaluated = {}
        for prefix, split in (("val", data.val), ("test", data.test)):
            if split is not None and len(split):
                evaluated |= evaluate(classify, split.images, split.labels, env, prepare, prefix)
        return {"stage": "linear", **evaluated, "lr": current_lr(linear_opt)}

    epochs = Epochs(train=lambda epoch, meter: (train_pretext if pretext(epoch) else train_linear)(epoch, meter),
                    evaluate=evaluate_epoch, watched=lambda epoch: model if pretext(epoch) else classifier,
                    classifies=lambda epoch: not pretext(epoch))
    state.setup_seconds = time.perf_counter() - entered
    return run_epochs(cfg, env, state, modules, cfg.epochs + cfg.linear_epochs, epochs, telemetry)
