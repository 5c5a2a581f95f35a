"""The batch-size transfer (`study.transfer`) in a report: each fit's prediction against the optimum the study found.

A study that transferred records `trainables.records.TRANSFER_ARTIFACT` on its parent run: per variant and key
(lr, TVLARS' λ), the earlier studies' best values at other batch sizes, their log-log least-squares fit
(ln value = intercept + slope · ln batch size), its prediction at the study's batch size with an interval,
and the linear and √B scaling rules (lr only)."""

from __future__ import annotations

import json
import math
import posixpath
import re
import tempfile
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from reports import artifacts, tables  # noqa: E402
from reports.figures import HEIGHT, STYLE, Figure, _save  # noqa: E402
from trainables.records import TRANSFER_ARTIFACT, Stage  # noqa: E402

TRANSFER = "transfer"  # the report section its figures follow (a `Figure.illustrates` and `Section.key`)
RULES = (("linear", "linear", 1.0), ("sqrt", "√B", 0.5))  # (key in a fit's rules, its name, power of B)
# Values of a fit's key are text (3 significant figures), never bare numbers: the markdown would print those at 2
# decimals; the slope and the ratio are numbers, at a table's 2 decimals.
SHOWN = ("variant", "key", "batch", "predicted [low, high]", "slope", "rules", "points", "found", "inside",
         "found / predicted")
KEEP = ("variant", "predicted [low, high]", "found", "inside")  # shown even when every row has the same


def _has_transfer(client: MlflowClient, run_id: str) -> bool:
    """Whether the run holds the transfer artifact."""
    folder = posixpath.dirname(TRANSFER_ARTIFACT) or None
    return TRANSFER_ARTIFACT in artifacts.listed(client, run_id, folder)


def load_transfers(client: MlflowClient, parents: list) -> list[dict]:
    """Each parent run's transfer record, with its `study_run_id` and `study` name; parents without one skipped."""
    loaded = []
    for parent in parents:
        if not _has_transfer(client, parent.info.run_id):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            path = artifacts.download(client, parent.info.run_id, TRANSFER_ARTIFACT, tmp)
            record = json.loads(Path(path).read_text())
        loaded.append({**record, "study_run_id": parent.info.run_id, "study": parent.info.run_name})
    return loaded


def all_fits(transfers: list[dict]) -> list[dict]:
    """Every fit of the transfer records, each with the study that made it."""
    return [{**fit, "study_run_id": t.get("study_run_id"), "study": t.get("study")}
            for t in transfers for fit in t.get("fits", [])]


def _value(trial: pd.Series, key: str) -> float:
    """The trial's value of `key` (NaN where it has none)."""
    value = trial["params"].get(key)
    return float(value) if tables.is_number(value) else math.nan


def found(fit: dict, trials: pd.DataFrame, metric: str = "best") -> tuple[float, str]:
    """(the fit's key in the variant's confirmed configuration, "confirm"), else in its best search trial by
    validation top-1, "search"; (NaN, "") where the study has neither."""
    mine = trials[trials["variant"] == fit["variant"]]
    if fit.get("study_run_id"):
        mine = mine[mine["study_run_id"] == fit["study_run_id"]]
    confirmed = mine[mine["stage"] == Stage.CONFIRM]
    if len(confirmed):
        return _value(tables.confirmed_configuration(confirmed, metric).iloc[0], fit["key"]), str(Stage.CONFIRM)
    searched = mine[mine["stage"] == Stage.SEARCH].dropna(subset=["val_best"])
    if len(searched):
        return _value(searched.loc[searched["val_best"].idxmax()], fit["key"]), str(Stage.SEARCH)
    return math.nan, ""


def _row(fit: dict, trials: pd.DataFrame, metric: str) -> dict:
    """One fit's numbers and the study's found value."""
    value, stage = found(fit, trials, metric)
    inside = None if math.isnan(value) else bool(fit["low"] <= value <= fit["high"])
    rules = fit.get("rules") or {}
    batches = sorted({int(p["batch_size"]) for p in fit.get("points", [])})
    return {"study": fit.get("study"), "variant": fit["variant"], "label": fit.get("label"), "key": fit["key"],
            "target_batch": int(fit["target_batch"]), "level": fit.get("level", math.nan),
            "predicted": fit["predicted"], "low": fit["low"], "high": fit["high"], "slope": fit["slope"],
            "intercept": fit["intercept"], **{f"rule_{name}": rules.get(name, math.nan) for name, _, _ in RULES},
            "n_points": len(fit.get("points", [])), "batch_sizes": ";".join(map(str, batches)),
            "found": value, "found_by": stage, "inside": inside, "ratio": value / fit["predicted"],
            "enqueued": ";".join(tables.sig(v) for v in fit.get("enqueued", []))}


def transfer_rows(fits: list[dict], trials: pd.DataFrame, metric: str = "best") -> pd.DataFrame:
    """One row per fit, its numbers unrounded (transfer.csv)."""
    return pd.DataFrame([_row(fit, trials, metric) for fit in fits])


def _sig(value: float) -> str:
    """3 significant figures, or the empty mark."""
    return tables.EMPTY if value is None or math.isnan(value) else tables.sig(value)


def _rules_text(row: pd.Series) -> str:
    """'linear 3, √B 2.12'; the empty mark without rules."""
    rules = [f"{shown} {_sig(row[f'rule_{name}'])}" for name, shown, _ in RULES if not pd.isna(row[f"rule_{name}"])]
    return ", ".join(rules) or tables.EMPTY


def _shown(row: pd.Series) -> dict:
    """A row as the report shows it."""
    batches = row["batch_sizes"].split(";") if row["batch_sizes"] else []
    inside = tables.EMPTY if pd.isna(row["inside"]) else ("yes" if row["inside"] else "no")
    found_text = f"{_sig(row['found'])} ({row['found_by']})" if row["found_by"] else tables.EMPTY
    return {"variant": row["variant"], "key": row["key"], "batch": row["target_batch"],
            "predicted [low, high]": f"{_sig(row['predicted'])} [{_sig(row['low'])}, {_sig(row['high'])}]",
            "slope": row["slope"], "rules": _rules_text(row),
            "points": f"{row['n_points']}: bs{', '.join(batches)}" if batches else tables.EMPTY,
            "found": found_text, "inside": inside, "found / predicted": row["ratio"]}


def shown(rows: pd.DataFrame) -> pd.DataFrame:
    """`transfer_rows` as the report's table: values as text at 3 significant figures, the interval after the
    prediction."""
    return pd.DataFrame([_shown(row) for _, row in rows.iterrows()], columns=list(SHOWN))


def transfer_table(fits: list[dict], trials: pd.DataFrame, metric: str = "best") -> pd.DataFrame:
    """One row per fit: its prediction [interval], slope, rules, points, and the study's found value (and where
    from: its confirm stage or its search) against it."""
    return shown(transfer_rows(fits, trials, metric))


def levels_text(fits: list[dict]) -> str:
    """The fits' interval levels: '68%', or '68%, 95%'."""
    return ", ".join(f"{level:.0%}" for level in sorted({fit["level"] for fit in fits if "level" in fit}))


def _line(fit: dict, batches: np.ndarray) -> np.ndarray:
    """The fit's value at `batches`."""
    return np.exp(fit["intercept"] + fit["slope"] * np.log(batches))


def _draw(ax, fit: dict, value: float) -> None:
    """Source points, fit, prediction with its interval, rules and the found value on `ax`."""
    points = pd.DataFrame(fit.get("points", []), columns=["batch_size", "value"])
    target, predicted = fit["target_batch"], fit["predicted"]
    ax.plot(points["batch_size"], points["value"], "o", color="C0", label="earlier studies' best")
    span = np.geomspace(min([*points["batch_size"], target]), max([*points["batch_size"], target]), 50)
    ax.plot(span, _line(fit, span), color="C0", lw=1.2, label=f"fit: slope {tables.sig(fit['slope'])}")
    ax.errorbar([target], [predicted], yerr=[[predicted - fit["low"]], [fit["high"] - predicted]], fmt="s",
                color="C1", capsize=5, label=f"predicted, {fit.get('level', math.nan):.0%} interval")
    start = points["batch_size"].max() if len(points) else target
    for (name, shown_name, power), color in zip(RULES, ("C2", "C4")):
        rule = (fit.get("rules") or {}).get(name)
        if rule is not None:  # the rule's line through the largest source point, to its value at the target
            ax.plot([start, target], [rule * (start / target) ** power, rule], ls="--", color=color,
                    label=f"{shown_name} rule: {tables.sig(rule)}")
    if not math.isnan(value):
        ax.plot([target], [value], "*", ms=15, color="C3", label=f"found: {tables.sig(value)}")


def _name(fit: dict, taken: set[str]) -> str:
    """`transfer_<variant>_<key>.png`, numbered where another fit already took it."""
    stem = re.sub(r"[^\w.-]", "_", f"transfer_{fit['variant']}_{fit['key']}")
    name, n = f"{stem}.png", 2
    while name in taken:
        name, n = f"{stem}_{n}.png", n + 1
    taken.add(name)
    return name


def _figure(fit: dict, value: float, path: Path) -> Figure:
    """One fit's figure at `path`."""
    fig, ax = plt.subplots(figsize=(6.5, HEIGHT))
    _draw(ax, fit, value)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    batches = sorted({int(p["batch_size"]) for p in fit.get("points", [])} | {int(fit["target_batch"])})
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set(xlabel="global batch size", ylabel=fit["key"],
           title=f"Batch-size transfer: {fit['variant']}, {fit['key']} at batch {fit['target_batch']}")
    ax.legend(loc="best")
    found_text = "" if math.isnan(value) else " and the value this study found (star)"
    return Figure(_save(fig, path),
                  f"{fit['variant']}: {fit['key']} vs batch size, log-log: earlier studies' best values (dots), their "
                  f"least-squares fit (line), its prediction at batch {fit['target_batch']} with its "
                  f"{fit.get('level', math.nan):.0%} interval (bar), the scaling rules (dashed){found_text}.", TRANSFER)


def transfer_fit(fits: list[dict], trials: pd.DataFrame, out: Path, metric: str = "best") -> list[Figure]:
    """One figure per fit (variant and key) into `out`: `figures/transfer_<variant>_<key>.png` in a report."""
    out.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    with plt.rc_context(STYLE):
        return [_figure(fit, found(fit, trials, metric)[0], out / _name(fit, taken)) for fit in fits]
