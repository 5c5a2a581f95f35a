"""`demo`: the embedded default — a small question answered in minutes on a laptop's CPU with the real CIFAR-10.

At one large batch (300 of a 2,700-image training split: 9 steps per epoch, the paper's 8K-on-50K
regime), does TVLARS without warm-up match LARS with warm-up, and what does warm-up buy LARS? A CIFAR
ResNet-8, 6 epochs; 3 search trials per variant (TPE + ASHA from epoch 2, on a 300-image validation
split), then the best configuration of each re-run with 3 fresh seeds, and 2 more for the variants of a
comparison still open (warm-up − none, TVLARS − LARS + warm-up): each ends with a verdict or the gaps
its seeds still allow, on 1,000 test images. Sized to finish in under 10 minutes on a 2-core laptop
(measured: the same study on 4,500 training images took 11.5 min).
"""

from __future__ import annotations

from search_spaces.families import LARS_NOWARMUP, LARS_WARMUP, TVLARS
from search_spaces.spec import Float, SearchSpace

_LR = Float("lr", 0.5, 4.0, log=True)

DEMO = SearchSpace(
    name="demo",
    description="CPU demo: ResNet-8 on 3k CIFAR-10 images, batch 300; TVLARS vs LARS ± warm-up, 3 seeds each",
    fixed={"task": "clf", "dataset": "cifar10", "model": "resnet8", "limit": 3000, "val_size": 300,
           "test_limit": 1000, "batch_size": 300, "epochs": 6, "device": "cpu",
           # evaluating both splits costs 1.2 s of a 6.5 s epoch here: every other epoch (and ASHA's rungs,
           # and the last) took train_fraction from 0.78 to 0.8x in the same study
           "eval_every": 2},
    variants={
        "tvlars": TVLARS.variant(_LR, Float("lam", 1e-4, 1e-1, log=True)),
        "lars_warmup": LARS_WARMUP.variant(_LR, warmup_epochs=1.0),
        "lars_nowarmup": LARS_NOWARMUP.variant(_LR),
    },
    # sequential confirm: 3 seeds, then 2 more for the variants of a comparison still open (≤ 6 trials more)
    num_samples=3, grace_period=2, reduction_factor=2, confirm=1, seeds=3, max_seeds=5,
    workers=1, gpus_per_worker=0.0, cpus_per_worker=1.0, max_concurrent=2,
)
