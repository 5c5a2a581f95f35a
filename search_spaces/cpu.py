"""`cifar10_cpu`: the TVLARS paper's question at CPU scale — the platform's first committed result.

CIFAR-10 (a 7,000-image class-balanced subset: 6,300 to train, 700 held out for validation; 2,000
class-balanced test images), a CIFAR ResNet-8, 8 epochs (evaluated every other one), at a small batch
(128: 49 steps per epoch) and an 8× larger one (1,024: 6 steps per epoch, the paper's 8K–16K-on-50K regime).
LARS with and without warm-up, TVLARS (no warm-up), LAMB (warm-up) and LAMBC (warm-up), each at each
batch: 4 search trials per variant (TPE + ASHA on validation top-1), then the best configuration of each
re-run with 3 fresh seeds, and 2 more where a comparison (warm-up − none, TVLARS − LARS + warm-up, LAMBC
− LAMB, per batch) is still open (`reports.sequential`). LAMBC clips as its paper: [0, τ], τ searched.
Learning rates scale with the batch (√8 between the two). Sized to end within 150 minutes on a 2-core
machine (measured here: ResNet-8 trains at 419 / 340 images/s on one thread at batch 128 / 1024).
"""

from __future__ import annotations

import math
from functools import partial

from search_spaces.families import LAMB_WARMUP, LAMBC, LARS_NOWARMUP, LARS_WARMUP, TVLARS
from search_spaces.spec import Float, SearchSpace, Variant, by_batch

BATCHES = (128, 1024)
_LARS_LR, _LAMB_LR = (0.3, 3.0), (2e-3, 2e-2)  # lr ranges at batch 128; ×√(b/128) above
_WARMUP_EPOCHS = 2.0

_CHOSEN: dict[str, tuple[Variant, tuple[float, float]]] = {  # variant: (its setting, its lr range at batch 128)
    "lars_warmup": (LARS_WARMUP.variant(warmup_epochs=_WARMUP_EPOCHS), _LARS_LR),
    "lars_nowarmup": (LARS_NOWARMUP.variant(), _LARS_LR),
    "tvlars": (TVLARS.variant(Float("lam", 1e-4, 1e-1, log=True), Float("delay_epochs", 0.0, 3.0)), _LARS_LR),
    "lamb_warmup": (LAMB_WARMUP.variant(warmup_epochs=_WARMUP_EPOCHS), _LAMB_LR),
    "lambc_warmup": (LAMBC.variant(warmup_epochs=_WARMUP_EPOCHS), _LAMB_LR),
}


def scaled_lr(at_128: tuple[float, float], size: int) -> tuple[Float, ...]:
    """The lr searched at batch `size`: the range at batch 128 × √(size/128)."""
    low, high = (x * math.sqrt(size / BATCHES[0]) for x in at_128)
    return (Float("lr", low, high, log=True),)


def _variants() -> dict[str, Variant]:
    """Each chosen setting at each batch size, setting by setting."""
    return {key: variant for name, (setting, at_128) in _CHOSEN.items()
            for key, variant in by_batch({name: setting}, BATCHES, partial(scaled_lr, at_128)).items()}


CIFAR10_CPU = SearchSpace(
    name="cifar10_cpu",
    description="CPU result: ResNet-8, CIFAR-10 7k, batch 128 vs 1024; LARS ± warm-up, TVLARS, LAMB, LAMBC; 3–5 seeds",
    fixed={"task": "clf", "dataset": "cifar10", "model": "resnet8", "limit": 7000, "val_size": 700,
           "test_limit": 2000, "epochs": 8, "eval_every": 2, "device": "cpu"},
    variants=_variants(),
    # sequential confirm: 3 seeds, then 2 more for the variants of each comparison still open (≤ 20 more trials,
    # ≈ 25 min here), so the study stays within 150 minutes on 2 cores
    num_samples=4, grace_period=2, reduction_factor=3, confirm=1, seeds=3, max_seeds=5,
    workers=1, gpus_per_worker=0.0, cpus_per_worker=1.0, max_concurrent=2,
)


# The batch-size transfer's benchmark (`python -m study.transfer_bench`): one optimizer setting, one batch size per
# study (`--set batch_size=N`), over a range three decades wide, as one searches when the batch's optimum is unknown.
# 20,000 training images: a batch-1,024 trial takes 117 optimizer steps (937 at batch 128). With 5,000 (30 steps at
# batch 1,024), the sources' optima sat on flat plateaus and batch 1,024's peak lay outside the fit's interval
# (docs/results/transfer_lars.md, commit 50539d9): too few steps for the optimum to move smoothly with batch size.
TRANSFER_LR = (0.02, 20.0)
TRANSFER_LARS = SearchSpace(
    name="transfer_lars",
    description="Transfer bench: LARS + warm-up, ResNet-8 (width 8) on CIFAR-10 21k; one batch size per study",
    fixed={"task": "clf", "dataset": "cifar10", "model": "resnet8", "width": 8, "limit": 21000, "val_size": 1000,
           "test_limit": 1000, "batch_size": 128, "epochs": 6, "eval_every": 1, "device": "cpu"},
    variants={"lars_warmup": LARS_WARMUP.variant(Float("lr", *TRANSFER_LR, log=True), warmup_epochs=1.0)},
    num_samples=8, grace_period=2, reduction_factor=2, confirm=0,
    workers=1, gpus_per_worker=0.0, cpus_per_worker=1.0, max_concurrent=2,
)
