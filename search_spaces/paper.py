"""The TVLARS paper's grid (Table 1): every optimizer family × batch size × dataset × task.

Names: `<family>_bs<size>` on CIFAR-10 (e.g. `tvlars_bs16k`, `lars_warmup_bs4k`, `lambc_bs2k`),
`<family>_<dataset>_bs<size>` on CIFAR-100 / Tiny ImageNet, and `bt_…` for Barlow Twins. Learning
rates are searched over a range bracketing the paper's three values for each batch size; ResNet-18
(ResNet-34 on Tiny ImageNet), 100 epochs (Barlow Twins: 1000 pretext + 100 linear-eval epochs).
"""

from __future__ import annotations

from search_spaces.families import (CLARS, LAMB_NOWARMUP, LAMB_WARMUP, LAMBC, LARC, LARS_NOWARMUP, LARS_WARMUP,
                                    TVLARS)
from search_spaces.spec import Choice, Family, Float, Param, SearchSpace, Variant, by_batch

# The paper's learning rates per batch size; a space searches [min/1.25, max·1.25] on a log scale.
PAPER_LRS = {512: (1, 2, 3), 1024: (2, 3, 4), 2048: (5, 6, 7), 4096: (8, 9, 10), 8192: (10, 12, 15),
             16384: (15, 17, 19)}
PAPER_DATASETS = {"cifar10": "resnet18", "cifar100": "resnet18", "tinyimagenet": "resnet34"}  # dataset: its model
PAPER_FAMILIES = (TVLARS, LARS_WARMUP, LARS_NOWARMUP, LAMB_WARMUP, LAMB_NOWARMUP, LAMBC, LARC, CLARS)
TABLE1_FAMILIES = (LARS_WARMUP, LARS_NOWARMUP, LAMB_WARMUP, LAMB_NOWARMUP, TVLARS)
_WARMUP_EPOCHS = Choice("warmup_epochs", (2.0, 5.0, 10.0))
_SEARCHED = {  # family: what the paper's spaces search besides the lr
    TVLARS.name: (Float("lam", 1e-6, 1e-2, log=True), Float("delay_epochs", 0.0, 10.0), Float("gamma_min", 0.0, 0.01)),
    LARS_WARMUP.name: (_WARMUP_EPOCHS,), LAMB_WARMUP.name: (_WARMUP_EPOCHS,)}


def batch_label(size: int) -> str:
    return f"{size // 1024}k" if size >= 1024 else str(size)


def lr_range(size: int) -> Float:
    """The lr searched at batch `size`: its paper values' range widened by 1.25 either way."""
    lrs = PAPER_LRS[size]
    return Float("lr", min(lrs) / 1.25, max(lrs) * 1.25, log=True)


def paper_variant(family: Family, *more: Param) -> Variant:
    """`family` as the paper's spaces search it, then `more` (e.g. the lr range)."""
    return family.variant(*_SEARCHED.get(family.name, ()), *more)


def paper_space(family: Family, size: int, dataset: str, task: str) -> SearchSpace:
    model = PAPER_DATASETS[dataset]
    name = "_".join(p for p in ("bt" if task == "bt" else "", family.name, "" if dataset == "cifar10" else dataset,
                                f"bs{batch_label(size)}") if p)
    fixed = {"task": task, "dataset": dataset, "model": model, "batch_size": size,
             "epochs": 1000 if task == "bt" else 100}
    if task == "bt":
        fixed["linear_epochs"] = 100
    stage = "Barlow Twins" if task == "bt" else "classification"
    return SearchSpace(
        name=name, description=f"{family.description}; {stage}, {dataset}, {model}, batch {size}",
        fixed=fixed, variants={family.name: paper_variant(family, lr_range(size))},
        # Barlow Twins has a test accuracy only in its linear-eval stage: ASHA prunes on the pretext loss.
        scheduler_metric=("train_loss", "min") if task == "bt" else None,
        grace_period=100 if task == "bt" else 10)


def table1_space(dataset: str) -> SearchSpace:
    """The TVLARS paper's Table 1 (classification) for `dataset` as one study: LARS and LAMB with and
    without warm-up, and TVLARS, at every batch size — its warm-up gaps fill in from one command."""
    model = PAPER_DATASETS[dataset]
    return SearchSpace(
        name=f"table1_{dataset}", description=f"TVLARS paper Table 1 on {dataset}: LARS/LAMB ± warm-up and TVLARS "
                                              f"× batch {min(PAPER_LRS)}–{max(PAPER_LRS)}; {model}",
        fixed={"task": "clf", "dataset": dataset, "model": model, "epochs": 100},
        variants=by_batch({f.name: paper_variant(f) for f in TABLE1_FAMILIES}, tuple(PAPER_LRS),
                          lambda size: (lr_range(size),)),
        num_samples=4, grace_period=10)


def paper_spaces() -> dict[str, SearchSpace]:
    spaces = [paper_space(f, s, d, t) for t in ("clf", "bt") for d in PAPER_DATASETS for f in PAPER_FAMILIES
              for s in PAPER_LRS]
    spaces += [table1_space(d) for d in PAPER_DATASETS]
    return {s.name: s for s in spaces}
