"""The comparison table (TVLARS paper Table 1 layout), the warm-up gap and the study budget.

A *configuration* is everything a trial was given except its seed; its trials are seeds. A *cell*
is (row = optimizer ± warm-up) × (column = task, dataset, model, epochs, batch size, lr); when a
cell holds several configurations (e.g. TVLARS at several λ), it shows the best one by mean.
Only trials that ran their full length (completed or diverged) are statistics; a cell whose trials
were all stopped by ASHA shows the best stopped trial, marked as such, and is never marked best.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
from scipy import stats

from reports.collect import row_rank
from reports.reference import attach_paper, lr_key
from trainables.records import LR_EFFECTIVE_KEY, MICRO_CHOSEN_KEY, TrialStatus, not_configuration

COLUMN = ["task", "dataset", "model", "epochs", "batch_size", "lr"]
# Settings that do not make a different configuration: the seeds, where/how fast it ran (TrialSettings' field
# metadata says which), and the lr (the column holds it, at 4 significant digits).
NOT_CONFIG = not_configuration() | {"lr", "base_lr", LR_EFFECTIVE_KEY, MICRO_CHOSEN_KEY}
FULL_LENGTH = (TrialStatus.COMPLETED, TrialStatus.DIVERGED)
DIVERGED, ERRORED = TrialStatus.DIVERGED.value, TrialStatus.ERRORED.value  # also a cell's counts of such runs


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float, int]:
    """(mean, half-width of the two-sided Student-t interval, n); the half-width is NaN for n < 2."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(x[0]), math.nan, 1
    half = stats.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n)
    return float(x.mean()), float(half), n


def config_key(params: dict) -> str:
    return json.dumps({k: v for k, v in sorted(params.items()) if k not in NOT_CONFIG}, default=str)


def configurations(trials: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per (cell, configuration): statistics over its seeds."""
    t = trials.assign(lr=trials["lr"].map(lr_key), config=trials["params"].map(config_key))
    rows = []
    for (label, *column, config), group in t.groupby(["label", *COLUMN, "config"], sort=False, dropna=False):
        full = group[group["status"].isin(FULL_LENGTH)]
        ok = full[(full["status"] == TrialStatus.COMPLETED) & full[metric].notna()]
        mean, half, n = mean_ci(ok[metric].tolist())
        std = float(ok[metric].std(ddof=1)) if n > 1 else math.nan
        stopped = group[group["status"] == TrialStatus.STOPPED_BY_ASHA]
        best_stopped = stopped.loc[stopped[metric].idxmax()] if stopped[metric].notna().any() else None
        rows.append({
            "label": label, **dict(zip(COLUMN, column)), "config": config, "mean": mean, "ci95": half, "n": n, "std": std,
            DIVERGED: int((full["status"] == DIVERGED).sum()), ERRORED: int((group["status"] == ERRORED).sum()),
            "stopped": len(stopped), "stopped_best": best_stopped[metric] if best_stopped is not None else math.nan,
            "stopped_epoch": int(best_stopped["epochs_run"]) if best_stopped is not None else 0,
            "seeds": ",".join(str(s) for s in sorted(ok["seed"].dropna().unique())),
        })
    return pd.DataFrame(rows)


def by_merit(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows best first: by mean over completed seeds, then n, then the best ASHA-stopped accuracy."""
    keys = pd.DataFrame({"score": rows["mean"].fillna(-math.inf), "n": rows["n"],
                         "stop": rows["stopped_best"].fillna(-math.inf)})
    return rows.loc[keys.sort_values(["score", "n", "stop"], ascending=False).index]


def cells(trials: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per cell: its best configuration (by mean), how many it held, the paper's number, best-in-column."""
    best = by_merit(configurations(trials, metric)).groupby(["label", *COLUMN], sort=False, dropna=False)
    out = best.head(1).copy()
    out["configs"] = best["config"].transform("size").loc[out.index]
    out["cell_diverged"] = best[DIVERGED].transform("sum").loc[out.index]
    out = attach_paper(out)
    column_best = out.groupby(COLUMN, dropna=False)["mean"].transform("max")
    out["best_in_column"] = out["mean"].notna() & (out["mean"] == column_best)
    order = out["label"].map(row_rank)
    return out.assign(_order=order).sort_values(["_order", *COLUMN]).drop(columns="_order").reset_index(drop=True)


def cell_text(cell: pd.Series) -> str:
    """'77.50 ± 0.40 (n=3)', 'diverged (n=2)', '33.10 @e2 (ASHA)', '—'."""
    if cell["n"] > 0:
        text = f"{cell['mean']:.2f}" + ("" if math.isnan(cell["ci95"]) else f" ± {cell['ci95']:.2f}")
        extra = [f"n={cell['n']}"] + ([f"{cell[DIVERGED]} {DIVERGED}"] if cell[DIVERGED] else [])
        text += f" ({', '.join(extra)})"
    elif cell[DIVERGED]:
        text = f"{DIVERGED} (n={cell[DIVERGED]})"
    elif cell["stopped"]:
        text = f"{cell['stopped_best']:.2f} @e{cell['stopped_epoch']} (ASHA)" if not math.isnan(
            cell["stopped_best"]) else f"stopped @e{cell['stopped_epoch']} (ASHA)"
    elif cell[ERRORED]:
        text = f"{ERRORED} (n={cell[ERRORED]})"
    else:
        text = "—"
    others = cell["cell_diverged"] - cell[DIVERGED]
    if cell["configs"] > 1:
        text += f" [best of {cell['configs']}" + (f"; {others} {DIVERGED}" if others else "") + "]"
    return text


NAMES = {"task": "", "dataset": "", "model": "", "epochs": "{}ep", "batch_size": "bs{}", "lr": "lr={:g}"}


def _title(column: tuple, fields: list[str]) -> str:
    return " ".join(NAMES[f].format(v) if NAMES[f] else str(v) for f, v in zip(COLUMN, column) if f in fields)


def wide(cell_rows: pd.DataFrame, bold=lambda s: f"**{s}**", columns: list[str] = COLUMN) -> tuple[pd.DataFrame, str]:
    """The paper's layout: a row per optimizer (and per matching paper row), a column per setting.

    Returns the table and a caption naming the settings shared by every column (left out of the titles).
    With `columns` = the setting without lr, each cell is the best lr's, which the cell then names.
    """
    settings = sorted({tuple(r) for r in cell_rows[columns].itertuples(index=False)})
    varying = [f for i, f in enumerate(columns) if len({c[i] for c in settings}) > 1] or [columns[-1]]
    shared = [f for f in columns if f not in varying]
    caption = _title(settings[0], shared) if shared and settings else ""
    ranked = by_merit(cell_rows).drop_duplicates(["label", *columns])
    table: dict[str, dict[str, str]] = {}
    for label in dict.fromkeys(cell_rows["label"]):
        table[label], papers = {}, {}
        for _, cell in ranked[ranked["label"] == label].iterrows():
            title = _title(tuple(cell[c] for c in columns), varying)
            text = cell_text(cell) if columns == COLUMN else f"lr={cell['lr']:g}: {cell_text(cell)}"
            best = cell["best_in_column"] if columns == COLUMN else _best_for_setting(cell, cell_rows, columns)
            table[label][title] = bold(text) if best else text
            if isinstance(cell.get("paper"), str):
                papers.setdefault(f"{label} ({cell['paper']})", {})[title] = f"{cell['paper_top1']:.2f}"
        table.update(papers)
    frame = pd.DataFrame.from_dict(table, orient="index", columns=[_title(c, varying) for c in settings])
    frame.index.name = "optimizer"
    return frame.fillna(""), caption


def _best_for_setting(cell: pd.Series, cell_rows: pd.DataFrame, columns: list[str]) -> bool:
    same = (cell_rows[columns] == cell[columns]).all(axis=1)
    return cell["n"] > 0 and cell["mean"] == cell_rows.loc[same, "mean"].max()


GAPS = (("LARS + warm-up", "LARS", "LARS: warm-up − none"),
        ("LAMB + warm-up", "LAMB", "LAMB: warm-up − none"),
        ("TVLARS", "LARS + warm-up", "TVLARS − LARS + warm-up"),
        ("LAMBC + warm-up", "LAMB + warm-up", "LAMBC − LAMB (warm-up)"))
CI_SUFFIX = " ±95%"  # the column of a gap's confidence half-width


def welch_half_width(a: pd.Series, b: pd.Series, level: float = 0.95) -> float:
    """Half-width of the Welch t-interval of mean(a) − mean(b), from two cells' std and n (NaN if n < 2)."""
    va, vb = a["std"] ** 2 / a["n"], b["std"] ** 2 / b["n"]
    if min(a["n"], b["n"]) < 2 or not math.isfinite(va + vb):
        return math.nan
    if va + vb == 0:
        return 0.0
    dof = (va + vb) ** 2 / (va**2 / (a["n"] - 1) + vb**2 / (b["n"] - 1))
    return float(stats.t.ppf(0.5 + level / 2, dof) * math.sqrt(va + vb))


def warmup_gap(cell_rows: pd.DataFrame) -> pd.DataFrame:
    """Per setting without lr, between each row's best-lr cell (completed runs): LARS and LAMB with − without
    warm-up, TVLARS (no warm-up) − LARS with warm-up, and LAMBC − LAMB; each with the half-width of its
    95% Welch interval over the two cells' seeds. Positive = the first is better."""
    setting = COLUMN[:-1]
    best = by_merit(cell_rows[cell_rows["n"] > 0]).drop_duplicates(["label", *setting])
    rows = []
    for key, group in best.groupby(setting, sort=False, dropna=False):
        cell = {row["label"]: row for _, row in group.iterrows()}
        row = dict(zip(setting, key))
        for first, second, name in GAPS:
            both = first in cell and second in cell
            row[name] = cell[first]["mean"] - cell[second]["mean"] if both else math.nan
            row[name + CI_SUFFIX] = welch_half_width(cell[first], cell[second]) if both else math.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=[*setting, *(c for _, _, n in GAPS for c in (n, n + CI_SUFFIX))])


def budget(trials: pd.DataFrame) -> pd.DataFrame:
    """Per study and stage, and in total: trials by status, epochs run, epochs ASHA saved, CPU/GPU hours."""
    t = trials.assign(
        saved=np.where(trials["status"] == TrialStatus.STOPPED_BY_ASHA, trials["epochs"] - trials["epochs_run"], 0),
        gpu_hours=trials["wall_seconds"] * trials["workers"] * trials["gpus_per_worker"] / 3600,
        cpu_hours=trials["wall_seconds"] * trials["workers"] * trials["cpus_per_worker"] / 3600)
    t.loc[t["gpus_per_worker"] > 0, "cpu_hours"] = 0.0  # a GPU trial's budget is its GPU hours

    def summary(group: pd.DataFrame) -> dict:
        counts = group["status"].value_counts()
        return {"trials": len(group), **{s.value: int(counts.get(s, 0)) for s in TrialStatus},
                "epochs_run": int(group["epochs_run"].sum()), "epochs_saved_by_asha": int(group["saved"].sum()),
                "epochs_without_asha": int(group["epochs"].sum()),
                "cpu_hours": round(float(group["cpu_hours"].sum()), 3),
                "gpu_hours": round(float(group["gpu_hours"].sum()), 3)}

    rows = [{"study": name, "stage": stage, **summary(group)}
            for (name, stage), group in t.groupby(["study", "stage"], sort=False)]
    if len(rows) > 1:
        rows.append({"study": "total", "stage": "all", **summary(t)})
    return pd.DataFrame(rows)
