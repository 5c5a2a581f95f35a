"""Learning-rate schedules stepped once per optimizer step, built from torch.optim.lr_scheduler.

- `warmup_cosine`: linear warm-up over `warmup_epochs`, then cosine to `min_lr_ratio`·lr (the seed's "lars-warm").
- `poly`: polynomial decay (1 − t/T)^power to 0 (the TVLARS paper's no-warm-up baseline).
- `cosine`: cosine from lr to `min_lr_ratio`·lr, no warm-up.
- `none`: constant lr (TVLARS; its φ(t) replaces warm-up).
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    PolynomialLR,
    SequentialLR,
)

from optim.checks import nonnegative, positive

SCHEDULERS = ("warmup_cosine", "poly", "cosine", "none")


def _cosine(optimizer: Optimizer, steps: int, min_lr_ratio: float) -> CosineAnnealingLR:
    base = optimizer.param_groups[0].get("initial_lr", optimizer.param_groups[0]["lr"])
    return CosineAnnealingLR(optimizer, T_max=max(steps, 1), eta_min=base * min_lr_ratio)


def build_scheduler(
    name: str,
    optimizer: Optimizer,
    *,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float = 5.0,
    min_lr_ratio: float = 0.0,
    power: float = 2.0,
) -> LRScheduler:
    """A per-step scheduler for `optimizer` over `epochs` × `steps_per_epoch` steps."""
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler: unknown {name!r}; choose one of {', '.join(SCHEDULERS)}")
    positive("epochs", epochs)
    positive("steps_per_epoch", steps_per_epoch)
    nonnegative("warmup_epochs", warmup_epochs)
    positive("power", power)
    if not 0 <= min_lr_ratio <= 1:
        raise ValueError(f"min_lr_ratio: must be in [0, 1], got {min_lr_ratio}")
    total = int(epochs * steps_per_epoch)
    if name == "none":
        return ConstantLR(optimizer, factor=1.0, total_iters=0)
    if name == "poly":
        return PolynomialLR(optimizer, total_iters=total, power=power)
    if name == "cosine":
        return _cosine(optimizer, total, min_lr_ratio)
    warmup = int(round(warmup_epochs * steps_per_epoch))
    if warmup >= total:
        raise ValueError(f"warmup_epochs: {warmup_epochs} warm-up epochs leave no steps of the {epochs}-epoch run")
    if warmup == 0:
        return _cosine(optimizer, total, min_lr_ratio)
    # lr at step i < warmup is lr·(i+1)/warmup: LinearLR from 1/warmup reaching 1 at step warmup−1.
    ramp = LinearLR(optimizer, start_factor=1.0 / warmup, end_factor=1.0, total_iters=max(warmup - 1, 1))
    decay = _cosine(optimizer, total - warmup, min_lr_ratio)
    return SequentialLR(optimizer, [ramp, decay], milestones=[warmup])
