"""The comparison table (TVLARS paper Table 1 layout), the warm-up gap, the search's trials and the study
budget; and `compact`, which every rendered table goes through.

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

from reports.collect import row_rank
from reports.reference import attach_paper, lr_key
from reports.sequential import COMPARISONS, SETTING, Verdict, signed, welch_half
from trainables.records import LR_EFFECTIVE_KEY, MICRO_CHOSEN_KEY, TrialStatus, not_configuration

COLUMN = [*SETTING, "lr"]  # a cell: its setting (what a comparison pairs two cells of) and its lr
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
    from scipy import stats  # here: SciPy's import is needed only for an interval, not where a study's start reads
    # this module (study.transfer's default lookup)

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
        text = format(cell["mean"], FLOAT) + ("" if math.isnan(cell["ci95"]) else f" ± {format(cell['ci95'], FLOAT)}")
        extra = [f"n={cell['n']}"] + ([f"{cell[DIVERGED]} {DIVERGED}"] if cell[DIVERGED] else [])
        text += f" ({', '.join(extra)})"
    elif cell[DIVERGED]:
        text = f"{DIVERGED} (n={cell[DIVERGED]})"
    elif cell["stopped"]:
        text = f"{format(cell['stopped_best'], FLOAT)} @e{cell['stopped_epoch']} (ASHA)" if not math.isnan(
            cell["stopped_best"]) else f"stopped @e{cell['stopped_epoch']} (ASHA)"
    elif cell[ERRORED]:
        text = f"{ERRORED} (n={cell[ERRORED]})"
    else:
        text = EMPTY
    others = cell["cell_diverged"] - cell[DIVERGED]
    if cell["configs"] > 1:
        text += f" [best of {cell['configs']}" + (f"; {others} {DIVERGED}" if others else "") + "]"
    return text


SIG_DIGITS = 3  # learning rates and searched values print at 3 significant figures
EXACT_DIGITS = 6  # ':g' precision: prints an `lr_key` (4 significant digits) whole
FLOAT = ".2f"  # every other number a table shows
EMPTY = "—"  # an empty cell
NAMES = {"epochs": "{}ep", "batch_size": "bs{}"}


def sig(value: float, digits: int = SIG_DIGITS) -> str:
    """A number at `digits` significant figures: '0.0024', '1.06', '2'."""
    return f"{value:.{digits}g}"


def setting_text(field: str, value: object, digits: int = SIG_DIGITS) -> str:
    """One setting as titles and captions show it: 'clf', '8ep', 'bs1024', 'lr=1.06'."""
    return f"lr={sig(value, digits)}" if field == "lr" else NAMES.get(field, "{}").format(value)


def _title(column: tuple, fields: list[str], digits: int = SIG_DIGITS) -> str:
    return " ".join(setting_text(f, v, digits) for f, v in zip(COLUMN, column) if f in fields)


def _titles(settings: list[tuple], fields: list[str]) -> list[str]:
    """Column titles; where 3 significant figures cannot tell two lrs apart, every lr prints whole."""
    titles = [_title(s, fields) for s in settings]
    return titles if len(set(titles)) == len(titles) else [_title(s, fields, EXACT_DIGITS) for s in settings]


def wide(cell_rows: pd.DataFrame, bold=lambda s: f"**{s}**", columns: list[str] = COLUMN) -> tuple[pd.DataFrame, str]:
    """The paper's layout: a row per optimizer (and per matching paper row), a column per setting.

    Returns the table and a caption naming the settings shared by every column (left out of the titles).
    With `columns` = the setting without lr, each cell is the best lr's, which the cell then names.
    """
    settings = sorted({tuple(r) for r in cell_rows[columns].itertuples(index=False)})
    varying = [f for i, f in enumerate(columns) if len({c[i] for c in settings}) > 1] or [columns[-1]]
    shared = [f for f in columns if f not in varying]
    caption = _title(settings[0], shared) if shared and settings else ""
    titles = dict(zip(settings, _titles(settings, varying)))
    ranked = by_merit(cell_rows).drop_duplicates(["label", *columns])
    table: dict[str, dict[str, str]] = {}
    for label in dict.fromkeys(cell_rows["label"]):
        table[label], papers = {}, {}
        for _, cell in ranked[ranked["label"] == label].iterrows():
            title = titles[tuple(cell[c] for c in columns)]
            text = cell_text(cell) if columns == COLUMN else f"{setting_text('lr', cell['lr'])}: {cell_text(cell)}"
            best = cell["best_in_column"] if columns == COLUMN else _best_for_setting(cell, cell_rows, columns)
            table[label][title] = bold(text) if best else text
            if isinstance(cell.get("paper"), str):
                papers.setdefault(f"{label} ({cell['paper']})", {})[title] = f"{cell['paper_top1']:.2f}"
        table.update(papers)
    frame = pd.DataFrame.from_dict(table, orient="index", columns=list(titles.values()))
    frame.index.name = "optimizer"
    return frame.fillna(""), caption


def _best_for_setting(cell: pd.Series, cell_rows: pd.DataFrame, columns: list[str]) -> bool:
    same = (cell_rows[columns] == cell[columns]).all(axis=1)
    return cell["n"] > 0 and cell["mean"] == cell_rows.loc[same, "mean"].max()


GAPS = COMPARISONS  # (first row, second row, name): the named comparisons, positive = the first is better
GAP_COLUMNS = ["comparison", "first", "second", *SETTING, "gap", "half_width", "n_first", "n_second"]


def welch_half_width(a: pd.Series, b: pd.Series, level: float = 0.95) -> float:
    """Half-width of the Welch t-interval of mean(a) − mean(b), from two cells' std and n (NaN if n < 2)."""
    return welch_half((a["std"] ** 2 / a["n"], b["std"] ** 2 / b["n"]), (int(a["n"]), int(b["n"])), 1 - level)


def _gap(first: str, second: str, name: str, setting: dict, cell: dict[str, pd.Series]) -> dict:
    """One comparison at one setting: first − second and its interval, NaN where a side has no completed run."""
    a, b = cell.get(first), cell.get(second)
    both = a is not None and b is not None
    return {"comparison": name, "first": first, "second": second, **setting,
            "gap": a["mean"] - b["mean"] if both else math.nan,
            "half_width": welch_half_width(a, b) if both else math.nan,
            "n_first": int(a["n"]) if a is not None else 0, "n_second": int(b["n"]) if b is not None else 0}


def warmup_gap(cell_rows: pd.DataFrame) -> pd.DataFrame:
    """One row per comparison (`GAPS`) × setting without lr, between each row's best-lr cell (completed runs):
    LARS and LAMB with − without warm-up, TVLARS (no warm-up) − LARS with warm-up, and LAMBC − LAMB; each with
    the half-width of its 95% Welch interval over the two cells' seeds. Positive = the first is better."""
    best = by_merit(cell_rows[cell_rows["n"] > 0]).drop_duplicates(["label", *SETTING])
    rows = [_gap(first, second, name, dict(zip(SETTING, key)), {r["label"]: r for _, r in group.iterrows()})
            for key, group in best.groupby(SETTING, sort=False, dropna=False) for first, second, name in GAPS]
    return pd.DataFrame(rows, columns=GAP_COLUMNS)


def gap_text(row: pd.Series) -> str:
    """'−0.78 ± 12.67'; '+3.00 (n=1 vs 3)' where a side has too few runs for an interval; '—' without one side."""
    if math.isnan(row["gap"]):
        return EMPTY
    if math.isnan(row["half_width"]):
        return f"{signed(row['gap'])} (n={row['n_first']} vs {row['n_second']})"
    return f"{signed(row['gap'])} ± {format(row['half_width'], FLOAT)}"


def gap_table(gaps: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """`warmup_gap`'s rows as comparisons × settings (a column per batch size, titled with any other setting
    that varies), without the comparisons empty everywhere; and a caption naming the settings every column shares."""
    settings = sorted({tuple(r) for r in gaps[SETTING].itertuples(index=False)})
    varying = [f for i, f in enumerate(SETTING) if f == "batch_size" or len({s[i] for s in settings}) > 1]
    shared = [f for f in SETTING if f not in varying]
    titles = dict(zip(settings, _titles(settings, varying)))
    table = {name: {titles[tuple(r[SETTING])]: gap_text(r) for _, r in part.iterrows()}
             for name, part in gaps.groupby("comparison", sort=False) if part["gap"].notna().any()}
    order = [name for _, _, name in GAPS if name in table]
    frame = pd.DataFrame.from_dict(table, orient="index", columns=list(titles.values())).reindex(order)
    frame.index.name = "comparison"
    return frame.fillna(EMPTY), _title(settings[0], shared) if shared and settings else ""


def several_lrs(cell_rows: pd.DataFrame) -> bool:
    """Whether some row (optimizer) has cells at more than one lr in one setting: only then does a column per
    lr show more than one cell per row."""
    return bool(cell_rows.groupby(["label", *SETTING], dropna=False)["lr"].nunique().gt(1).any())


SEARCH_TOP = 3  # search trials shown per variant and batch size; search_table.csv has them all
# What a search table's "searched" leaves out: what two seeds of a configuration may differ in (the lr
# is searched) and the setting, which has its own columns.
NOT_SEARCHED = (NOT_CONFIG - {"lr"}) | set(SETTING)


def searched_keys(params: pd.Series) -> list[str]:
    """The keys whose value differs among these trials' params (lr first); ['lr'] when none does."""
    keys = sorted({k for p in params for k in p} - NOT_SEARCHED)
    varying = [k for k in keys if len({json.dumps(p.get(k), default=str) for p in params}) > 1]
    return sorted(varying or ["lr"], key=lambda k: (k != "lr", k))


def is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


def value_text(value: object) -> str:
    """A param as a table shows it: numbers at 3 significant figures, anything else as it is."""
    return sig(value) if is_number(value) else str(value)


def search_trials(trials: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per search trial: its variant, setting, searched values ('lr=1.06, lam=0.00123'), `metric`,
    epochs run, status and run; in row order, then by batch size and variant, then `metric` best first."""
    keys = {variant: searched_keys(group["params"]) for variant, group in trials.groupby("variant")}
    searched = [", ".join(f"{k}={value_text(p.get(k))}" for k in keys[variant])
                for p, variant in zip(trials["params"], trials["variant"])]
    out = trials.assign(searched=searched, _rank=trials["label"].map(lambda label: row_rank(label)[0]))
    out = out.sort_values(["_rank", "label", "batch_size", "variant", metric], na_position="last",
                          ascending=[True, True, True, True, False])
    return out[["variant", *SETTING, "searched", metric, "epochs_run", "status", "run_name"]].reset_index(drop=True)


def search_top(search: pd.DataFrame, top: int = SEARCH_TOP) -> pd.DataFrame:
    """`search_trials`' best `top` rows of each variant at each batch size."""
    return search.groupby(["variant", "batch_size"], sort=False).head(top)


def _empty(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() in ("", EMPTY)


def _text(value: object) -> str:
    return format(value, FLOAT) if isinstance(value, (float, np.floating)) else str(value)


def _says_nothing(column: pd.Series) -> bool:
    """One value in several rows, or a single row's zero (a count or hours of nothing)."""
    first = column.iloc[0]
    return column.map(str).nunique() == 1 and (len(column) > 1 or (is_number(first) and first == 0))


def compact(table: pd.DataFrame, keep: tuple[str, ...] = ()) -> tuple[pd.DataFrame, str]:
    """`table` without its all-empty columns and its constant ones (`_says_nothing`) but those in `keep`; and the
    constants as text to say once ('clf cifar10 resnet8 8ep; diverged = 0')."""
    empty = [c for c in table if table[c].map(_empty).all()]
    constant = [c for c in table if c not in empty and c not in keep and _says_nothing(table[c])]
    first = table.iloc[0] if len(table) else None
    settings = " ".join(setting_text(c, first[c]) for c in constant if c in COLUMN)
    others = [f"{c} = {_text(first[c])}" for c in constant if c not in COLUMN]
    return table.drop(columns=empty + constant), "; ".join(filter(None, [settings, *others]))


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


def confirmed_configuration(trials: pd.DataFrame, metric: str) -> pd.DataFrame:
    """A row's confirm trials of the configuration its seeds were spent on: the most seeded, then the best by
    mean (with one confirmed configuration per variant, the only one)."""
    keys = trials["params"].map(config_key)
    merit = trials.groupby(keys)[metric].agg(["size", "mean"]).fillna(-math.inf)
    return trials[keys == merit.sort_values(["size", "mean"], ascending=False).index[0]]


def with_verdict_intervals(gaps: pd.DataFrame, verdicts: pd.DataFrame) -> pd.DataFrame:
    """The gap rows that have a verdict read with its interval (at the look that decided it, or the last)."""
    if verdicts.empty:
        return gaps
    read = verdicts.dropna(subset=["gap"]).set_index(["comparison", *SETTING])
    out = gaps.copy()
    for i, row in out.iterrows():
        key = (row["comparison"], *row[SETTING])
        if key in read.index and math.isfinite(read.loc[key, "low"]):
            verdict = read.loc[key]
            out.loc[i, ["gap", "half_width"]] = verdict["gap"], (verdict["high"] - verdict["low"]) / 2
            out.loc[i, ["n_first", "n_second"]] = [int(n) for n in verdict["seeds"].split("/")]
    return out


def interval_text(row: pd.Series) -> str:
    """'+12.30 [+5.10, +19.50]'; the gap alone without an interval; '—' without a gap."""
    if math.isnan(row["gap"]):
        return EMPTY
    if math.isnan(row["low"]):
        return signed(row["gap"])
    return f"{signed(row['gap'])} [{signed(row['low'])}, {signed(row['high'])}]"


VERDICT_SHOWN = ("comparison", "gap [interval]", "verdict")  # a verdict table's columns even when constant


def verdict_table(verdicts: pd.DataFrame) -> pd.DataFrame:
    """The verdicts as the report shows them: one row per comparison and setting."""
    shown = verdicts.assign(**{"gap [interval]": verdicts.apply(interval_text, axis=1)})
    shown["verdict"] = [f"**{v}**" if v != str(Verdict.OPEN) else v for v in shown["verdict"]]
    return shown[["comparison", *SETTING, "gap [interval]", "seeds", "look", "verdict", "still_possible"]].rename(
        columns={"still_possible": "still possible"})
