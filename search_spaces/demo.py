"""`demo`: the embedded default — a minutes-long study on this machine's CPU with the real CIFAR-10.

A CIFAR ResNet-8 on a 6,000-image class-balanced subset at global batch 600 (a tenth of the data
per step: large for its subset), comparing TVLARS, LARS with and without warm-up, and LAMB over
learning rate (and TVLARS' λ). Eight trials, two at a time, ASHA from epoch 2.
"""

from __future__ import annotations

from search_spaces.spec import Float, SearchSpace, Variant

_LARS = {"momentum": 0.9, "weight_decay": 5e-4}

DEMO = SearchSpace(
    name="demo",
    description="CPU demo: ResNet-8 on 6k CIFAR-10 images, batch 600; TVLARS vs LARS ± warm-up vs LAMB",
    fixed={"task": "clf", "dataset": "cifar10", "model": "resnet8", "limit": 6000, "test_limit": 2000,
           "batch_size": 600, "epochs": 6, "device": "cpu"},
    variants={
        "tvlars": Variant({"optimizer": "tvlars", "scheduler": "none", **_LARS},
                          (Float("lr", 0.5, 4.0, log=True), Float("lam", 1e-4, 1e-1, log=True))),
        "lars_warmup": Variant({"optimizer": "lars", "scheduler": "warmup_cosine", "warmup_epochs": 0.5, **_LARS},
                               (Float("lr", 0.5, 4.0, log=True),)),
        "lars_nowarmup": Variant({"optimizer": "lars", "scheduler": "poly", **_LARS}, (Float("lr", 0.5, 4.0, log=True),)),
        "lamb_warmup": Variant({"optimizer": "lamb", "scheduler": "warmup_cosine", "warmup_epochs": 0.5,
                                "weight_decay": 5e-4}, (Float("lr", 3e-3, 3e-2, log=True),)),
    },
    num_samples=8, grace_period=2, reduction_factor=2,
    workers=1, gpus_per_worker=0.0, cpus_per_worker=1.0, max_concurrent=2,
)
