"""Figures (matplotlib, PNG): accuracy vs epoch, trust ratio vs step (paper Figs. 1–2), accuracy vs λ
(Fig. 4), warm-up gap vs batch size, and best-so-far accuracy vs cumulative epochs (what ASHA saved)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from reports.collect import row_rank  # noqa: E402
from reports.tables import CI_SUFFIX, GAPS  # noqa: E402
from trainables.records import Stage, TrialStatus  # noqa: E402

STYLE = {"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
         "axes.spines.right": False, "legend.fontsize": 8}


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


def accuracy_vs_epoch(trials: pd.DataFrame, epochs: pd.DataFrame, out: Path, metric: str = "test_top1") -> list[Path]:
    """One figure per (task, dataset, batch size): every trial faint, each optimizer's best trial bold."""
    paths, colors = [], _colors(trials["label"])
    for (task, dataset, batch), group in trials.groupby(["task", "dataset", "batch_size"]):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for label, runs in sorted(group.groupby("label"), key=lambda kv: row_rank(kv[0])):
            best = runs.loc[runs["best"].fillna(-1).idxmax()]
            for _, run in runs.iterrows():
                curve = epochs[epochs["run_id"] == run["run_id"]].dropna(subset=[metric])
                if run["run_id"] == best["run_id"]:
                    ax.plot(curve["epoch"], curve[metric], color=colors[label], lw=2, marker="o", ms=3,
                            label=f"{label} (best: lr={best['lr']:.3g}, {best['status']})")
                else:
                    ax.plot(curve["epoch"], curve[metric], color=colors[label], lw=0.8, alpha=0.35)
        ax.set(xlabel="epoch", ylabel=f"{metric} (%)",
               title=f"Test accuracy per epoch: {task} {dataset}, batch {batch} (faint: other trials)")
        ax.legend(loc="lower right")
        paths.append(_save(fig, out / f"accuracy_vs_epoch_{task}_{dataset}_bs{batch}.png"))
    return paths


def trust_ratio(trials: pd.DataFrame, load: Callable[[str], pd.DataFrame | None], out: Path) -> Path:
    """Median and spread over layers of the trust ratio per step, for each optimizer's best trial
    (with and without warm-up side by side, as in the paper's Figures 1–2)."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors, drawn = _colors(trials["label"]), 0
    for label, runs in sorted(trials.groupby("label"), key=lambda kv: row_rank(kv[0])):
        for _, run in runs.sort_values("best", ascending=False).iterrows():
            table = load(run["run_id"])
            if table is None or table.empty:
                continue
            by_step = table.groupby("step")["rho"]
            q = by_step.quantile([0.1, 0.5, 0.9]).unstack()
            ax.plot(q.index, q[0.5], color=colors[label], lw=1.6, label=f"{label} median (lr={run['lr']:.3g})")
            ax.fill_between(q.index, q[0.1], q[0.9], color=colors[label], alpha=0.18)
            drawn += 1
            break
    if drawn:
        ax.set_yscale("log")
        ax.legend(loc="best")
    else:
        _empty(ax, "no trial has trust-ratio telemetry")
    ax.set(xlabel="optimizer step", ylabel="trust ratio (per layer, as the optimizer applies it)",
           title="Layer-wise trust ratio: median, band = 10–90% of layers")
    return _save(fig, out / "trust_ratio_vs_step.png")


def accuracy_vs_lambda(trials: pd.DataFrame, metric: str, out: Path) -> Path:
    """TVLARS' test accuracy against its decay λ (paper Figure 4); hollow = stopped early by ASHA."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    tv = trials[trials["label"] == "TVLARS"]
    lam = tv["params"].map(lambda p: p.get("lam"))
    tv = tv.assign(lam=pd.to_numeric(lam, errors="coerce")).dropna(subset=["lam"])
    if tv.empty:
        _empty(ax, "no TVLARS trials with a λ in this report")
    for status, style in ((TrialStatus.COMPLETED, dict(marker="o")),
                          (TrialStatus.STOPPED_BY_ASHA, dict(marker="o", mfc="none")),
                          (TrialStatus.DIVERGED, dict(marker="x"))):
        part = tv[tv["status"] == status]
        if not part.empty:
            y = part[metric].fillna(0 if status == TrialStatus.DIVERGED else np.nan)
            ax.plot(part["lam"], y, ls="none", ms=7, color="C3", label=status.replace("_", " "), **style)
            for lam, value, run in zip(part["lam"], y, part.itertuples()):
                ax.annotate(f"lr={run.lr:.3g}, e{run.epochs_run}", (lam, value), textcoords="offset points",
                            xytext=(5, 4), fontsize=7, color="0.3")
    if not tv.empty:
        ax.set_xscale("log")
        ax.legend(loc="best")
    ax.set(xlabel="λ (TVLARS decay rate)", ylabel=f"test top-1, {metric} epoch (%)",
           title="TVLARS: accuracy vs λ (diverged drawn at 0)")
    return _save(fig, out / "accuracy_vs_lambda.png")


def warmup_gap(gaps: pd.DataFrame, out: Path) -> Path:
    """Warm-up gap (with − without, percentage points) and the other gaps against batch size, with 95% intervals."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    drawn = 0
    for name in (name for _, _, name in GAPS):
        for (task, dataset), part in gaps.groupby(["task", "dataset"]):
            part = part.dropna(subset=[name]).sort_values("batch_size")
            if not part.empty:  # bars: the 95% Welch interval of the difference (none where a cell has n < 2)
                ax.errorbar(part["batch_size"], part[name], yerr=part[name + CI_SUFFIX], marker="o", capsize=3,
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
    return _save(fig, out / "warmup_gap_vs_batch.png")


def best_so_far(trials: pd.DataFrame, metric: str, out: Path) -> Path:
    """The search's best accuracy so far (validation where trials logged it) against epochs spent, trials in
    the order they finished."""
    split = "validation"
    if f"val_{metric}" in trials and trials[f"val_{metric}"].notna().any():
        metric = f"val_{metric}"
    else:
        split = "test"
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
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
    return _save(fig, out / "best_so_far_vs_epochs.png")


def all_figures(trials: pd.DataFrame, epochs: pd.DataFrame, gaps: pd.DataFrame, metric: str, out: Path,
                load_telemetry: Callable[[str], pd.DataFrame | None]) -> list[Path]:
    """Every figure into `out`; `metric` is the trials' column to judge by: "best" or "final" epoch."""
    out.mkdir(parents=True, exist_ok=True)
    with plt.rc_context(STYLE):
        return [*accuracy_vs_epoch(trials, epochs, out), trust_ratio(trials, load_telemetry, out),
                accuracy_vs_lambda(trials, metric, out), warmup_gap(gaps, out),
                best_so_far(trials[trials["stage"] == Stage.SEARCH], metric, out)]
