"""`cifar10_cpu`: the TVLARS paper's question at CPU scale — the platform's first committed result.

CIFAR-10 (a 7,000-image class-balanced subset: 6,300 to train, 700 held out for validation; 2,000
class-balanced test images), a CIFAR ResNet-8, 8 epochs (evaluated every other one), at a small batch
(128: 49 steps per epoch) and an 8× larger one (1,024: 6 steps per epoch, the paper's 8K–16K-on-50K regime).
LARS with and without warm-up, TVLARS (no warm-up), LAMB (warm-up) and LAMBC (warm-up), each at each
batch: 4 search trials per variant (TPE + ASHA on validation top-1), then the best configuration of each
re-run with 3 fresh seeds. Learning rates scale with the batch (√8 between the two). Sized to end within
90 minutes on a 2-core machine (measured here: ResNet-8 trains at 419 / 340 images/s on one thread at
batch 128 / 1024).
"""

from __future__ import annotations

import math

from search_spaces.spec import Float, SearchSpace, Variant, by_batch

BATCHES = (128, 1024)
_LARS = {"momentum": 0.9, "weight_decay": 5e-4}
_LAMB = {"weight_decay": 5e-4}
_WARMUP = {"scheduler": "warmup_cosine", "warmup_epochs": 2.0}
_SMALL_LRS = {"lars": (0.3, 3.0), "lamb": (2e-3, 2e-2)}  # lr ranges at batch 128; ×√(b/128) above


def lr_range(family: str, size: int) -> tuple[Float, ...]:
    low, high = (x * math.sqrt(size / BATCHES[0]) for x in _SMALL_LRS[family])
    return (Float("lr", low, high, log=True),)


FAMILIES = {
    "lars_warmup": ("lars", Variant({"optimizer": "lars", **_WARMUP, **_LARS})),
    "lars_nowarmup": ("lars", Variant({"optimizer": "lars", "scheduler": "poly", **_LARS})),
    "tvlars": ("lars", Variant({"optimizer": "tvlars", "scheduler": "none", **_LARS},
                               (Float("lam", 1e-4, 1e-1, log=True), Float("delay_epochs", 0.0, 3.0)))),
    "lamb_warmup": ("lamb", Variant({"optimizer": "lamb", **_WARMUP, **_LAMB})),
    "lambc_warmup": ("lamb", Variant({"optimizer": "lambc", **_WARMUP, **_LAMB},
                                     (Float("clip_upper", 0.1, 10.0, log=True),
                                      Float("clip_lower", 1e-3, 10.0, log=True, at_most="clip_upper")))),
}


def _variants() -> dict[str, Variant]:
    variants = {}
    for name, (lr_family, variant) in FAMILIES.items():
        variants |= by_batch({name: variant}, BATCHES, lambda size, family=lr_family: lr_range(family, size))
    return variants


CIFAR10_CPU = SearchSpace(
    name="cifar10_cpu",
    description="CPU result: ResNet-8, CIFAR-10 7k, batch 128 vs 1024; LARS ± warm-up, TVLARS, LAMB, LAMBC; 3 seeds",
    fixed={"task": "clf", "dataset": "cifar10", "model": "resnet8", "limit": 7000, "val_size": 700,
           "test_limit": 2000, "epochs": 8, "eval_every": 2, "device": "cpu"},
    variants=_variants(),
    num_samples=4, grace_period=2, reduction_factor=3, confirm=1, seeds=3,
    workers=1, gpus_per_worker=0.0, cpus_per_worker=1.0, max_concurrent=2,
)
