"""The papers' ImageNet studies: ResNet-50 at 8K, 16K and 32K, and the CLARS paper's DenseNet-121 / MobileNet-V2.

`imagenet_resnet50_bs{8k,16k,32k}`: one study per batch size, whose variants are the optimizer settings
the papers compare there — LARS with and without warm-up (You, Gitman, Ginsburg 2017, "Large Batch
Training of Convolutional Networks", arXiv:1708.03888), LAMB with and without warm-up (You et al., ICLR
2020, "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes", arXiv:1904.00962),
TVLARS (no warm-up; "Revisiting LARS for Large Batch Training Generalization of Neural Networks",
arXiv:2309.14053), CLARS (no warm-up; Huo, Gu, Huang, "Large Batch Optimization for Deep Learning
Using New Complete Layer-Wise Adaptive Rate Scaling", AAAI 2021 — arXiv:2002.01576, "Large Batch
Training Does Not Need Warmup") and LAMBC (LAMB with its trust ratio clipped; Fong, Chen, Chen 2020,
"Improving Layer-wise Adaptive Rate Methods using Trust Ratio Clipping", arXiv:2011.13584).
`clars_imagenet_{densenet121,mobilenet_v2}`: the CLARS paper's other two networks, CLARS against LARS
with and without warm-up, each at the same three batch sizes.

The protocol, and where each value comes from:
- ImageNet-1k at 224×224, 90 epochs: the ResNet-50 budget of Goyal et al. 2017 ("Accurate, Large
  Minibatch SGD", arXiv:1706.02677) and of the LAMB authors' ImageNet code
  (github.com/fastalgo/imagenet_resnet50_lamb, run.sh: 3,519 steps at batch 32,768 = 90 epochs);
  LARS is commonly run for the same 90 epochs. The CLARS spaces keep them too: as commonly run, not
  checked against the CLARS paper, nor are its batch sizes (the three here; `--variants` picks some).
- Label smoothing 0.1 for ResNet-50: the LAMB authors' code (run.sh: `--label_smoothing=0.1`); Goyal
  et al. used none. The CLARS spaces use none (Goyal et al.'s protocol, whose gradual warm-up CLARS is
  compared with; an assumption).
- Warm-up: LARS 5 epochs, linear (Goyal et al.'s gradual warm-up); LAMB and LAMBC 20 epochs (the LAMB
  authors' code: 782 warm-up steps at batch 32,768, "warmup for 20 epochs"). TVLARS and CLARS have
  none by design, LARS/LAMB without warm-up decay polynomially from the first step (the families'
  schedulers: `search_spaces.families`). After warm-up our schedule is cosine; the LAMB code decays
  linearly.
- Learning rates are searched log-uniformly over ×1/3 … ×3 around a centre, wide on purpose: no
  centre below is a published value at this setting except LAMB's at 32K. LAMB/LAMBC: the LAMB code's
  0.04 at 32K (run.sh: `--learning_rate=0.04`), √-scaled to smaller batches (0.028 at 16K, 0.02 at 8K;
  the √ rule is an assumption). LARS/TVLARS/CLARS (η = 1e-3, so the global lr is O(10)): the
  geometric mean of the TVLARS paper's three LARS lrs at 16K (15, 17, 19: `search_spaces.paper`),
  √-scaled (12 at 8K, 17 at 16K, 24 at 32K); the peak lr of about 29 often quoted for MLPerf-style
  LARS at 32K is inside the 32K range (8–72), but is not a figure checked here.
- BatchNorm over groups of 128 samples (`bn_group`), whatever micro-batch fits the GPU
  (`micro_batch_size="auto"`): the LAMB code's 128 images per TPU core (batch 32,768 on 256 cores);
  Goyal et al. normalised over 32.
- Not the papers': weight decay is the families' 5e-4 (shared by every study here); Goyal et al. used 1e-4 and the LAMB code a decoupled 1.5 (`--weight_decay_input`).
  Override with `--set weight_decay=…`.

One trial is a 90-epoch ImageNet run: every space needs a GPU per worker (`--set workers=8` for a
node of eight; `--set gpus_per_worker=0` only for a smoke test on CPU). Budget: 4 search trials per
variant (TPE + ASHA from epoch 10), then the best of each re-run with 3 seeds.
"""

from __future__ import annotations

import math

from search_spaces.families import CLARS, LAMB_NOWARMUP, LAMB_WARMUP, LAMBC, LARS_NOWARMUP, LARS_WARMUP, TVLARS
from search_spaces.paper import PAPER_LRS, batch_label, paper_variant
from search_spaces.spec import Float, SearchSpace, Variant, by_batch

BATCHES = (8192, 16384, 32768)
EPOCHS = 90
IMAGE_SIZE = 224
BN_GROUP = 128
RESNET50_LABEL_SMOOTHING = 0.1  # the LAMB authors' ImageNet code
CLARS_MODELS = ("densenet121", "mobilenet_v2")
LARS_WARMUP_EPOCHS = 5.0  # Goyal et al. 2017
LAMB_WARMUP_EPOCHS = 20.0  # the LAMB authors' ImageNet code at 32K
LAMB_LR_32K = 0.04  # the LAMB authors' ImageNet code at 32K
LR_SPREAD = 3.0  # each lr range is centre/3 … centre·3


def lars_lr_centre(size: int) -> float:
    """The LARS-family lr at batch `size`: the TVLARS paper's 16K lrs' geometric mean, √-scaled."""
    at_16k = math.prod(PAPER_LRS[16384]) ** (1 / len(PAPER_LRS[16384]))
    return at_16k * math.sqrt(size / 16384)


def lamb_lr_centre(size: int) -> float:
    """The LAMB-family lr at batch `size`: the LAMB code's 0.04 at 32K, √-scaled."""
    return LAMB_LR_32K * math.sqrt(size / 32768)


def lr_range(centre: float) -> Float:
    return Float("lr", centre / LR_SPREAD, centre * LR_SPREAD, log=True)


def _fixed(model: str, label_smoothing: float) -> dict:
    return {"task": "clf", "dataset": "imagenet", "image_size": IMAGE_SIZE, "model": model, "epochs": EPOCHS,
            "label_smoothing": label_smoothing, "micro_batch_size": "auto", "bn_group": BN_GROUP}


def resnet50_variants(size: int) -> dict[str, Variant]:
    """The optimizer settings compared at batch `size`, each with its lr range."""
    lars, lamb = lr_range(lars_lr_centre(size)), lr_range(lamb_lr_centre(size))
    return {
        LARS_WARMUP.name: LARS_WARMUP.variant(lars, warmup_epochs=LARS_WARMUP_EPOCHS),
        LARS_NOWARMUP.name: LARS_NOWARMUP.variant(lars),
        LAMB_WARMUP.name: LAMB_WARMUP.variant(lamb, warmup_epochs=LAMB_WARMUP_EPOCHS),
        LAMB_NOWARMUP.name: LAMB_NOWARMUP.variant(lamb),
        TVLARS.name: paper_variant(TVLARS, lars),  # λ, delay and γ_min searched as in the TVLARS paper's spaces
        CLARS.name: CLARS.variant(lars),
        LAMBC.name: LAMBC.variant(lamb, warmup_epochs=LAMB_WARMUP_EPOCHS),
    }


def resnet50_space(size: int) -> SearchSpace:
    """ResNet-50 on ImageNet at batch `size`: LARS/LAMB ± warm-up, TVLARS, CLARS, LAMBC as one study."""
    return SearchSpace(
        name=f"imagenet_resnet50_bs{batch_label(size)}",
        description=f"ImageNet ResNet-50, batch {size}, {EPOCHS} epochs, label smoothing "
                    f"{RESNET50_LABEL_SMOOTHING}: LARS/LAMB ± warm-up, TVLARS, CLARS, LAMBC (GPUs)",
        fixed={**_fixed("resnet50", RESNET50_LABEL_SMOOTHING), "batch_size": size},
        variants=resnet50_variants(size),
        num_samples=4, grace_period=10)


def clars_space(model: str) -> SearchSpace:
    """The CLARS paper's comparison on `model`: CLARS (no warm-up) against LARS ± warm-up, at every batch."""
    lars = {CLARS.name: CLARS.variant(),
            LARS_WARMUP.name: LARS_WARMUP.variant(warmup_epochs=LARS_WARMUP_EPOCHS),
            LARS_NOWARMUP.name: LARS_NOWARMUP.variant()}
    return SearchSpace(
        name=f"clars_imagenet_{model}",
        description=f"CLARS paper on ImageNet, {model}, {EPOCHS} epochs: CLARS vs LARS ± warm-up × batch "
                    f"{min(BATCHES)}–{max(BATCHES)} (GPUs)",
        fixed=_fixed(model, 0.0),
        variants=by_batch(lars, BATCHES, lambda size: (lr_range(lars_lr_centre(size)),)),
        num_samples=4, grace_period=10)


def imagenet_spaces() -> dict[str, SearchSpace]:
    spaces = [resnet50_space(size) for size in BATCHES] + [clars_space(model) for model in CLARS_MODELS]
    return {s.name: s for s in spaces}
