"""Figures (matplotlib, PNG): accuracy vs epoch, trust ratio vs step (paper Figs. 1–2), warm-up gap vs batch
size, and best-so-far accuracy vs cumulative epochs (what ASHA saved); accuracy vs λ (Fig. 4) is Optuna's
slice plot of the search (`reports.optuna_views`). Each comes with a one-line caption and the report section
it illustrates."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from reports.collect import row_rank  # noqa: E402
from reports.tables import GAPS, sig  # noqa: E402
from trainables.records import Stage  # noqa: E402

STYLE = {"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
         "axes.spines.right": False, "legend.fontsize": 8}
HEADLINE, GAP, SEARCH = "headline", "gap", "search"  # the sections a figure can illustrate
PANEL_WIDTH, HEIGHT = 4.5, 4.2  # inches: one trust-ratio panel; every figure's height


@dataclass(frozen=True)
class Figure:
    path: Path
    caption: str  # one line, shown under the image
    illustrates: str  # the section it follows: HEADLINE, GAP or SEARCH


def _colors(labels) -> dict[str, tuple]:
    ordered = sorted(set(labels), key=row_rank)
    cmap = plt.get_cmap("tab10")
    return {label: cmap(i % 10) for i, label in enumerate(ordered)}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=10, color="0.35", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def accuracy_vs_epoch(trials: pd.DataFrame, epochs: pd.DataFrame, out: Path, metric: str = "test_top1") -> list[Figure]:
    """One figure per (task, dataset, batch size): every trial faint, each optimizer's best trial bold."""
    drawn, colors = [], _colors(trials["label"])
    for (task, dataset, batch), group in trials.groupby(["task", "dataset", "batch_size"]):
        fig, ax = plt.subplots(figsize=(7, HEIGHT))
        for label, runs in sorted(group.groupby("label"), key=lambda kv: row_rank(kv[0])):
            best = runs.loc[runs["best"].fillna(-1).idxmax()]
            for _, run in runs.iterrows():
                curve = epochs[epochs["run_id"] == run["run_id"]].dropna(subset=[metric])
                if run["run_id"] == best["run_id"]:
                    ax.plot(curve["epoch"], curve[metric], color=colors[label], lw=2, marker="o", ms=3,
                            label=f"{label} (best: lr={sig(best['lr'])}, {best['status']})")
                else:
                    ax.plot(curve["epoch"], curve[metric], color=colors[label], lw=0.8, alpha=0.35)
        ax.set(xlabel="epoch", ylabel=f"{metric} (%)",
               title=f"Test accuracy per epoch: {task} {dataset}, batch {batch} (faint: other trials)")
        ax.legend(loc="lower right")
        path = _save(fig, out / f"accuracy_vs_epoch_{task}_{dataset}_bs{batch}.png")
        drawn.append(Figure(path, f"Test top-1 per epoch, {task} {dataset} at batch {batch}: each optimizer's best run "
                                  "bold, its other runs faint.", HEADLINE))
    return drawn


def _trust_panel(ax, runs: pd.DataFrame, load: Callable[[str], pd.DataFrame | None], colors: dict) -> int:
    """Each optimizer's best run with telemetry in `runs` on `ax`; returns how many it drew."""
    drawn = 0
    for label, group in sorted(runs.groupby("label"), key=lambda kv: row_rank(kv[0])):
        for _, run in group.sort_values("best", ascending=False).iterrows():
            table = load(run["run_id"])
            if table is None or table.empty:
                continue
            q = table.groupby("step")["rho"].quantile([0.1, 0.5, 0.9]).unstack()
            ax.plot(q.index, q[0.5], color=colors[label], lw=1.6, label=f"{label} (lr={sig(run['lr'])})")
            ax.fill_between(q.index, q[0.1], q[0.9], color=colors[label], alpha=0.18)
            drawn += 1
            break
    return drawn


def trust_ratio(trials: pd.DataFrame, load: Callable[[str], pd.DataFrame | None], out: Path) -> Figure:
    """Median and spread over layers of the trust ratio per step, for each optimizer's best confirmed run
    (every run where no confirm stage ran), one panel per batch size (the paper's Figures 1–2)."""
    confirmed = trials[trials["stage"] == Stage.CONFIRM]
    runs = confirmed if len(confirmed) else trials
    sizes = sorted(runs["batch_size"].unique())
    fig, axes = plt.subplots(1, len(sizes), figsize=(max(7, PANEL_WIDTH * len(sizes)), HEIGHT), squeeze=False)
    colors = _colors(runs["label"])
    for ax, size in zip(axes[0], sizes):
        if _trust_panel(ax, runs[runs["batch_size"] == size], load, colors):
            ax.set_yscale("log")
            ax.legend(loc="best")
        else:
            _empty(ax, "no run has trust-ratio telemetry")
        ax.set(xlabel="optimizer step", title=f"batch {size}")
    axes[0][0].set_ylabel("trust ratio (per layer, as applied)")
    fig.suptitle("Layer-wise trust ratio: median over layers, band = 10–90% of layers")
    which = "confirmed run" if len(confirmed) else "run"
    return Figure(_save(fig, out / "trust_ratio_vs_step.png"),
                  f"Layer-wise trust ratio per step of each optimizer's best {which}, one panel per batch size "
                  "(line: median over layers; band: 10–90% of layers).", HEADLINE)


def warmup_gap(gaps: pd.DataFrame, out: Path) -> Figure:
    """Each comparison of `tables.warmup_gap` (first − second, percentage points) against batch size, with its
    95% interval."""
    fig, ax = plt.subplots(figsize=(6.5, HEIGHT))
    drawn = 0
    for name in (name for _, _, name in GAPS):
        for (task, dataset), part in gaps[gaps["comparison"] == name].groupby(["task", "dataset"]):
            part = part.dropna(subset=["gap"]).sort_values("batch_size")
            if not part.empty:  # bars: the gap table's interval (none where a cell has n < 2)
                ax.errorbar(part["batch_size"], part["gap"], yerr=part["half_width"], marker="o", capsize=3,
                            label=f"{name} ({task} {dataset})")
                drawn += 1
    if drawn:
        ax.set_xscale("log", base=2)
        ax.axhline(0, color="0.4", lw=0.8)
        ax.legend(loc="best")
    else:
        _empty(ax, "no batch size has runs both with and without warm-up\n(of LARS or LAMB) that ran to the end")
    ax.set(xlabel="global batch size", ylabel="gap in test top-1 (percentage points)",
           title="Gaps between optimizers (best lr each; bars: 95% interval)")
    return Figure(_save(fig, out / "warmup_gap_vs_batch.png"),
                  "Each gap of the table against batch size (percentage points; bars: its interval in the gap table).", GAP)


def best_so_far(trials: pd.DataFrame, metric: str, out: Path) -> Figure:
    """The search's best accuracy so far (validation where trials logged it) against epochs spent, trials in
    the order they finished."""
    split = "validation"
    if f"val_{metric}" in trials and trials[f"val_{metric}"].notna().any():
        metric = f"val_{metric}"
    else:
        split = "test"
    fig, ax = plt.subplots(figsize=(6.5, HEIGHT))
    order = trials.sort_values("end_time")
    spent = order["epochs_run"].cumsum()
    ax.step(spent, order[metric].fillna(-np.inf).cummax().replace(-np.inf, np.nan), where="post", lw=2,
            label="best so far")
    ax.plot(spent, order[metric], ls="none", marker=".", color="0.5", label="each trial (at its end)")
    full = int(order["epochs"].sum())
    ax.axvline(full, color="C3", ls="--", lw=1, label=f"without early stopping: {full} epochs")
    ax.set(xlabel="cumulative epochs trained", ylabel=f"best {split} top-1 so far, {metric.removeprefix('val_')} epoch (%)",
           title=f"Search progress: {int(spent.iloc[-1])} epochs run, {full - int(spent.iloc[-1])} saved by ASHA")
    ax.legend(loc="lower right")
    return Figure(_save(fig, out / "best_so_far_vs_epochs.png"),
                  f"Search progress: the best {split} top-1 so far against epochs trained, trials in the order they "
                  "ended (dashed: the epochs without early stopping).", SEARCH)


def all_figures(trials: pd.DataFrame, epochs: pd.DataFrame, gaps: pd.DataFrame, metric: str, out: Path,
                load_telemetry: Callable[[str], pd.DataFrame | None]) -> list[Figure]:
    """Every figure into `out`; `metric` is the trials' column to judge by: "best" or "final" epoch; `gaps`
    is `tables.warmup_gap`'s long frame."""
    out.mkdir(parents=True, exist_ok=True)
    with plt.rc_context(STYLE):
        return [*accuracy_vs_epoch(trials, epochs, out), trust_ratio(trials, load_telemetry, out),
                warmup_gap(gaps, out), best_so_far(trials[trials["stage"] == Stage.SEARCH], metric, out)]
