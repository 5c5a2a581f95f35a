"""The papers' published numbers (reports/paper_tables/*.csv), keyed like our table's cells.

`tvlars_paper_table1.csv`: TVLARS paper Table 1 (ResNet-18, 100 epochs; Barlow Twins 1000 pretext
epochs; LARS and LAMB with warm-up, TVLARS without). `lambc_paper_table1.csv`: LAMBC paper Table 1
(ResNet-18, 80 epochs; whether its LAMB/LAMBC warmed up is not stated, so they match either row).
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

# paper optimizer name → our row labels it may stand beside
_TVLARS_ROWS = {"lars": ("LARS + warm-up",), "lamb": ("LAMB + warm-up",), "tvlars": ("TVLARS",)}
_LAMBC_ROWS = {"lambc": ("LAMBC + warm-up", "LAMBC"), "lamb": ("LAMB + warm-up", "LAMB")}
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
    return pd.DataFrame(rows)


def lr_key(lr: float) -> float:
    """Learning rates are compared at 4 significant digits (a batch-scaled lr is not bit-exact)."""
    return float(f"{lr:.4g}")


def attach_paper(cells: pd.DataFrame) -> pd.DataFrame:
    """`cells` (whose `lr` is an `lr_key`) with `paper_top1` and `paper` where task, dataset, model,
    epochs, batch size and lr all match a published cell."""
    paper = paper_cells()
    paper["lr"] = paper["lr"].map(lr_key)
    return cells.merge(paper, on=[*KEY, "lr"], how="left")
