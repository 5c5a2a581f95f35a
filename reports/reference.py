"""The papers' published numbers (reports/paper_tables/*.csv), keyed like our table's cells.

`tvlars_paper_table1.csv`: TVLARS paper Table 1 (ResNet-18, 100 epochs; Barlow Twins 1000 pretext
epochs; LARS and LAMB with warm-up, TVLARS without). `lambc_paper_table1.csv`: LAMBC paper Table 1
(ResNet-18, 80 epochs; whether its LAMB/LAMBC warmed up is not stated, so they match either row).
`imagenet_published.csv`: published ImageNet top-1 at the settings of the `search_spaces.imagenet` studies
(optimizer = the variant's family name; each row's `source` cites it). A row without an lr stands beside
our cell at every lr of its setting (the published figure is the tuned one).
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

# paper optimizer name → our row labels it may stand beside
_TVLARS_ROWS = {"lars": ("LARS + warm-up",), "lamb": ("LAMB + warm-up",), "tvlars": ("TVLARS",)}
_LAMBC_ROWS = {"lambc": ("LAMBC + warm-up", "LAMBC"), "lamb": ("LAMB + warm-up", "LAMB")}
_IMAGENET_ROWS = {"lars_warmup": "LARS + warm-up", "lars_nowarmup": "LARS", "lamb_warmup": "LAMB + warm-up",
                  "lamb_nowarmup": "LAMB", "tvlars": "TVLARS", "clars": "CLARS", "lambc": "LAMBC + warm-up"}
KEY = ["label", "task", "dataset", "model", "epochs", "batch_size"]


def _read(name: str) -> pd.DataFrame:
    with resources.files("reports").joinpath("paper_tables", name).open() as f:
        return pd.read_csv(f)


def paper_cells() -> pd.DataFrame:
    """Columns label, task, dataset, model, epochs, batch_size, lr, paper_top1, paper (one row per cell)."""
    rows = []
    for _, r in _read("tvlars_paper_table1.csv").iterrows():
        for label in _TVLARS_ROWS[r.optimizer]:
            rows.append({"label": label, "task": r.task, "dataset": r.dataset, "model": r.model,
                         "epochs": 1000 if r.task == "bt" else 100, "batch_size": int(r.batch_size),
                         "lr": float(r.lr), "paper_top1": float(r.test_top1), "paper": "TVLARS paper"})
    for _, r in _read("lambc_paper_table1.csv").iterrows():
        for label in _LAMBC_ROWS[r.optimizer]:
            rows.append({"label": label, "task": r.task, "dataset": r.dataset, "model": r.model,
                         "epochs": int(r.epochs), "batch_size": int(r.batch_size), "lr": float(r.lr),
                         "paper_top1": float(r.test_top1), "paper": "LAMBC paper"})
    for _, r in _read("imagenet_published.csv").iterrows():
        rows.append({"label": _IMAGENET_ROWS[r.optimizer], "task": r.task, "dataset": r.dataset, "model": r.model,
                     "epochs": int(r.epochs), "batch_size": int(r.batch_size), "lr": float(r.lr),  # NaN: any lr
                     "paper_top1": float(r.test_top1), "paper": r.paper})
    return pd.DataFrame(rows)


def lr_key(lr: float) -> float:
    """Learning rates are compared at 4 significant digits (a batch-scaled lr is not bit-exact)."""
    return float(f"{lr:.4g}")


def attach_paper(cells: pd.DataFrame) -> pd.DataFrame:
    """`cells` (whose `lr` is an `lr_key`) with `paper_top1` and `paper` where task, dataset, model,
    epochs, batch size and lr all match a published cell (one published without an lr matches every lr)."""
    paper = paper_cells()
    paper["lr"] = paper["lr"].map(lr_key)
    any_lr = paper["lr"].isna()
    # each row without an lr, once for every lr our cells have at its setting
    matched = paper[any_lr].drop(columns="lr").merge(cells[[*KEY, "lr"]].drop_duplicates(), on=KEY)
    paper = pd.concat([paper[~any_lr], matched], ignore_index=True) if len(matched) else paper[~any_lr]
    return cells.merge(paper, on=[*KEY, "lr"], how="left")
