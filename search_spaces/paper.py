"""The TVLARS paper's grid (Table 1): every optimizer family × batch size × dataset × task.

Names: `<family>_bs<size>` on CIFAR-10 (e.g. `tvlars_bs16k`, `lars_warmup_bs4k`, `lambc_bs2k`),
`<family>_<dataset>_bs<size>` on CIFAR-100 / Tiny ImageNet, and `bt_…` for Barlow Twins. Learning
rates are searched over a range bracketing the paper's three values for each batch size; ResNet-18
(ResNet-34 on Tiny ImageNet), 100 epochs (Barlow Twins: 1000 pretext + 100 linear-eval epochs).
"""

from __future__ import annotations

from search_spaces.spec import Choice, Float, SearchSpace, Variant, by_batch

# The paper's learning rates per batch size; a space searches [min/1.25, max·1.25] on a log scale.
PAPER_LRS = {512: (1, 2, 3), 1024: (2, 3, 4), 2048: (5, 6, 7), 4096: (8, 9, 10), 8192: (10, 12, 15),
             16384: (15, 17, 19)}
DATASETS = {"cifar10": "resnet18", "cifar100": "resnet18", "tinyimagenet": "resnet34"}
_LARS = {"momentum": 0.9, "weight_decay": 5e-4}
_LAMB = {"weight_decay": 5e-4}
_CLIP = (Float("clip_upper", 0.1, 10.0, log=True), Float("clip_lower", 1e-3, 10.0, log=True, at_most="clip_upper"))

FAMILIES: dict[str, tuple[str, Variant]] = {
    "tvlars": ("TVLARS (no warm-up; φ(t) ramps the trust ratio)", Variant(
        {"optimizer": "tvlars", "scheduler": "none", **_LARS},
        (Float("lam", 1e-6, 1e-2, log=True), Float("delay_epochs", 0.0, 10.0), Float("gamma_min", 0.0, 0.01)))),
    "lars_warmup": ("LARS with linear warm-up then cosine", Variant(
        {"optimizer": "lars", "scheduler": "warmup_cosine", **_LARS}, (Choice("warmup_epochs", (2.0, 5.0, 10.0)),))),
    "lars_nowarmup": ("LARS without warm-up, polynomial decay", Variant(
        {"optimizer": "lars", "scheduler": "poly", **_LARS})),
    "lamb_warmup": ("LAMB with linear warm-up then cosine", Variant(
        {"optimizer": "lamb", "scheduler": "warmup_cosine", **_LAMB}, (Choice("warmup_epochs", (2.0, 5.0, 10.0)),))),
    "lamb_nowarmup": ("LAMB without warm-up, polynomial decay", Variant(
        {"optimizer": "lamb", "scheduler": "poly", **_LAMB})),
    "lambc": ("LAMBC: LAMB with the trust ratio clipped to [μ, τ]", Variant(
        {"optimizer": "lambc", "scheduler": "warmup_cosine", **_LAMB}, _CLIP)),
    "larc": ("LARC: LARS with the local lr clipped at the global lr", Variant(
        {"optimizer": "larc", "scheduler": "warmup_cosine", **_LARS})),
    "clars": ("CLARS: per-sample gradient norms in the trust ratio, no warm-up", Variant(
        {"optimizer": "clars", "scheduler": "poly", **_LARS})),
}


def batch_label(size: int) -> str:
    return f"{size // 1024}k" if size >= 1024 else str(size)


def lr_range(size: int) -> Float:
    lrs = PAPER_LRS[size]
    return Float("lr", min(lrs) / 1.25, max(lrs) * 1.25, log=True)


def paper_space(family: str, size: int, dataset: str, task: str) -> SearchSpace:
    what, variant = FAMILIES[family]
    name = "_".join(p for p in ("bt" if task == "bt" else "", family, "" if dataset == "cifar10" else dataset,
                                f"bs{batch_label(size)}") if p)
    fixed = {"task": task, "dataset": dataset, "model": DATASETS[dataset], "batch_size": size,
             "epochs": 1000 if task == "bt" else 100}
    if task == "bt":
        fixed["linear_epochs"] = 100
    searched = Variant(variant.fixed, variant.searched + (lr_range(size),))
    stage = "Barlow Twins" if task == "bt" else "classification"
    return SearchSpace(
        name=name, description=f"{what}; {stage}, {dataset}, {DATASETS[dataset]}, batch {size}",
        fixed=fixed, variants={family: searched},
        # Barlow Twins has a test accuracy only in its linear-eval stage: ASHA prunes on the pretext loss.
        scheduler_metric=("train_loss", "min") if task == "bt" else None,
        grace_period=100 if task == "bt" else 10)


TABLE1_FAMILIES = ("lars_warmup", "lars_nowarmup", "lamb_warmup", "lamb_nowarmup", "tvlars")


def table1_space(dataset: str) -> SearchSpace:
    """The TVLARS paper's Table 1 (classification) for `dataset` as one study: LARS and LAMB with and
    without warm-up, and TVLARS, at every batch size — its warm-up gaps fill in from one command."""
    variants = by_batch({f: FAMILIES[f][1] for f in TABLE1_FAMILIES}, tuple(PAPER_LRS), lambda size: (lr_range(size),))
    return SearchSpace(
        name=f"table1_{dataset}", description=f"TVLARS paper Table 1 on {dataset}: LARS/LAMB ± warm-up and TVLARS "
                                              f"× batch {min(PAPER_LRS)}–{max(PAPER_LRS)}; {DATASETS[dataset]}",
        fixed={"task": "clf", "dataset": dataset, "model": DATASETS[dataset], "epochs": 100},
        variants=variants, num_samples=4, grace_period=10)


def paper_spaces() -> dict[str, SearchSpace]:
    spaces = [paper_space(f, s, d, t) for t in ("clf", "bt") for d in DATASETS for f in FAMILIES for s in PAPER_LRS]
    spaces += [table1_space(d) for d in DATASETS]
    return {s.name: s for s in spaces}
