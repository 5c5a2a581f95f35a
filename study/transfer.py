"""Batch-size transfer: what earlier studies found at other batch sizes, as the first trials of a new search.

Per variant of the new study and per value it searches that a transfer predicts (`TRANSFERRED`: its learning
rate, and TVLARS' λ), the earlier studies' best value at each batch size of the same optimizer setting (same
row label, dataset, model and task) — the confirmed configuration's where a confirm stage ran, else the best
search trial's by validation top-1 — is fitted as a power law of the batch size (least squares on log-log),
and predicted at the new batch size with an interval. The prediction and the interval's ends are enqueued as
the variant's first search trials (clipped to the searched range, which stays as the space defines it); the
rest of the search goes on as before. The linear and √B rules are computed beside the fit, for comparison.

Why a fit, not a rule: Shallue et al. (JMLR 2019) measured optimal learning rates that follow neither the
linear nor the √B rule across workloads; a per-optimizer fit to measured optima follows whichever holds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from reports.collect import ReportError, collect, row_label
from reports.tables import is_number
from search_spaces.spec import Float, param_name
from study.optuna_store import TRANSFER_POINTS
from study.plan import StudyPlan
from trainables.records import TRIAL_ID_TAG, Stage

TRANSFERRED = ("lr", "lam")  # the searched values a transfer predicts: every lr, and TVLARS' decay λ
LEVEL = 0.68  # the prediction's interval: ±1 standard error of the fitted line at the target (t, n − 2 df)
NO_TRANSFER = "none"  # --transfer-from none: start the search from nothing
SAME_SETTING = ("label", "dataset", "model", "task")  # what makes an earlier trial the same optimizer setting


class TransferError(ValueError):
    """`--transfer-from` names nothing a fit can be made from (the message says what was found)."""


@dataclass(frozen=True)
class Point:
    """One earlier study's best value at one batch size."""

    batch_size: int
    value: float
    study: str
    trial: str
    stage: str


@dataclass
class Fit:
    """ln value = intercept + slope · ln batch, fitted to `points`; the prediction at `target_batch`."""

    variant: str
    label: str
    key: str
    target_batch: int
    points: list[Point]
    slope: float
    intercept: float
    level: float
    predicted: float
    low: float
    high: float
    rules: dict[str, float] = field(default_factory=dict)  # lr only: linear and √B from the largest batch
    searched: tuple[float, float] = (math.nan, math.nan)
    enqueued: list[float] = field(default_factory=list)

    def line(self) -> str:
        sizes = sorted({p.batch_size for p in self.points})
        rules = "".join(f", {name} rule {value:.3g}" for name, value in self.rules.items())
        return (f"transfer: {self.variant} {self.key}: {len(self.points)} earlier optima at batch "
                f"{', '.join(map(str, sizes))} → {self.key} ∝ B^{self.slope:.2f}; at {self.target_batch}: "
                f"{self.predicted:.3g} [{self.low:.3g}, {self.high:.3g}] ({self.level:.0%}){rules}; first trials: "
                f"{', '.join(f'{v:.3g}' for v in self.enqueued)}")


def fit_power_law(points: list[Point], target_batch: int, level: float = LEVEL) -> dict[str, float]:
    """Least squares of ln value on ln batch: slope, intercept, the prediction at `target_batch` and its interval
    (±t·s.e. of the fitted line there; with two points, no residual exists: the interval is the prediction)."""
    import scipy.stats  # 0.7 s of imports here: paid only where a fit is made, not by every study's default lookup

    sizes = {p.batch_size for p in points}
    if len(sizes) < 2:
        raise TransferError(f"a fit needs optima at two batch sizes or more, got batch {sorted(sizes)}")
    x = np.log([p.batch_size for p in points])
    y = np.log([p.value for p in points])
    fitted = scipy.stats.linregress(x, y)
    x0 = math.log(target_batch)
    centre = fitted.intercept + fitted.slope * x0
    half = 0.0
    if len(points) > 2:
        resid = y - (fitted.intercept + fitted.slope * x)
        s = math.sqrt(float(resid @ resid) / (len(points) - 2))
        se = s * math.sqrt(1 / len(points) + (x0 - x.mean()) ** 2 / float(((x - x.mean()) ** 2).sum()))
        half = float(scipy.stats.t.ppf((1 + level) / 2, len(points) - 2)) * se
    return {"slope": float(fitted.slope), "intercept": float(fitted.intercept), "predicted": math.exp(centre),
            "low": math.exp(centre - half), "high": math.exp(centre + half)}


def scaling_rules(points: list[Point], target_batch: int) -> dict[str, float]:
    """The linear and √B rules from the optimum at the largest earlier batch size."""
    anchor = max(points, key=lambda p: (p.batch_size, p.value))
    ratio = target_batch / anchor.batch_size
    return {"linear": anchor.value * ratio, "sqrt": anchor.value * math.sqrt(ratio)}


def best_points(trials: pd.DataFrame, key: str) -> list[Point]:
    """Per (earlier study, batch size): the confirmed configuration's `key` if a confirm stage ran, else the
    best search trial's by validation top-1."""
    points = []
    for (_, batch), group in trials.groupby(["study_run_id", "batch_size"]):
        confirmed = group[group["stage"] == Stage.CONFIRM]
        searched = group[(group["stage"] == Stage.SEARCH) & group["val_best"].notna()]
        best = confirmed.iloc[0] if len(confirmed) else (searched.loc[searched["val_best"].idxmax()]
                                                         if len(searched) else None)
        value = best["params"].get(key) if best is not None else None
        if is_number(value) and value > 0:
            points.append(Point(int(batch), float(value), str(best["study"]), str(best["run_name"]), str(best["stage"])))
    return points


@dataclass
class Target:
    """One variant of the new study: its optimizer setting, batch size and the ranges a transfer may predict."""

    variant: str
    setting: dict[str, Any]  # SAME_SETTING's values
    batch_size: int
    ranges: dict[str, Float]

    def describe(self) -> str:
        return f"{self.setting['label']} ({self.setting['dataset']}, {self.setting['model']})"


def targets(plan: StudyPlan) -> list[Target]:
    """The study's variants and which of `TRANSFERRED` each searches (a value the command line fixes is not)."""
    found = []
    for draw in plan.space.corner_draws(frozenset(plan.overrides))[::2]:  # one draw per variant
        variant = draw["variant"]
        settings = plan.trial_config(draw).to_dict()
        params = plan.space.searched + plan.space.variants[variant].searched
        ranges = {p.key: p for p in params if p.key in TRANSFERRED and isinstance(p, Float)
                  and p.key not in plan.overrides}
        setting = {"label": row_label(settings), **{k: settings[k] for k in SAME_SETTING[1:]}}
        found.append(Target(variant, setting, int(settings["batch_size"]), ranges))
    return found


def same_setting(trials: pd.DataFrame, target: Target) -> pd.DataFrame:
    mask = np.ones(len(trials), dtype=bool)
    for key, value in target.setting.items():
        mask &= (trials[key] == value).to_numpy()
    return trials[mask]


@dataclass
class Transfer:
    """The fits of a study's transfer and the trials it enqueues first."""

    sources: list[str]
    fits: list[Fit]
    num_samples: int

    def first_trials(self) -> list[tuple[str, dict[str, Any], str]]:
        """(variant, {Optuna name: value}, tag) per enqueued trial: the prediction, then the interval's ends, each
        variant's keys together, distinct ones only, at most `num_samples` per variant."""
        out = []
        for variant in dict.fromkeys(f.variant for f in self.fits):
            fits = [f for f in self.fits if f.variant == variant]
            seen: list[dict[str, float]] = []
            for i, tag in enumerate(TRANSFER_POINTS):
                values = {param_name(variant, f.key): f.enqueued[min(i, len(f.enqueued) - 1)] for f in fits}
                if values not in seen and len(seen) < self.num_samples:
                    seen.append(values)
                    out.append((variant, values, tag))
        return out

    def to_json(self) -> dict[str, Any]:
        return {"sources": self.sources, "fits": [asdict(f) for f in self.fits]}

    def params(self) -> dict[str, str]:
        """The parent run's params: each fit's slope, prediction and interval."""
        out = {}
        for f in self.fits:
            for name in ("slope", "predicted", "low", "high"):
                out[f"transfer.{f.variant}.{f.key}.{name}"] = f"{getattr(f, name):.4g}"
        return out


def fit_target(trials: pd.DataFrame, target: Target) -> list[Fit]:
    """The target's fits, one per value it searches with optima at two batch sizes or more."""
    fits = []
    for key, rng in target.ranges.items():
        points = best_points(same_setting(trials, target), key)
        if len({p.batch_size for p in points}) < 2:
            continue
        law = fit_power_law(points, target.batch_size)
        clip = lambda v: min(max(v, rng.low), rng.high)  # noqa: E731 — the searched range is kept
        ends = [clip(law["predicted"]), clip(law["low"]), clip(law["high"])]
        fits.append(Fit(target.variant, target.setting["label"], key, target.batch_size, points, law["slope"],
                        law["intercept"], LEVEL, law["predicted"], law["low"], law["high"],
                        scaling_rules(points, target.batch_size) if key == "lr" else {}, (rng.low, rng.high),
                        list(dict.fromkeys(ends))))
    return fits


def what_was_found(trials: pd.DataFrame, target: Target) -> str:
    """The batch sizes at which earlier studies have the target's optimizer setting (for an error)."""
    same = same_setting(trials, target)
    if same.empty:
        return f"no trials of {target.describe()}"
    return f"{target.describe()} at batch {', '.join(map(str, sorted(same['batch_size'].unique())))} only"


def source_trials(client: MlflowClient, experiments: list[str], explicit: bool) -> pd.DataFrame | None:
    """The earlier experiments' trials (None: the default source has none); unknown ones are an error when named."""
    frames = []
    for name in experiments:
        try:
            frames.append(collect(client, name).trials)
        except ReportError as err:
            if explicit:
                raise TransferError(f"--transfer-from: {err}".replace("--experiment: ", "")) from None
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else None


def holds_other_batch_sizes(client: MlflowClient, experiments: list[str], sizes: set[int]) -> bool:
    """Whether the experiments hold a trial at a batch size other than one of `sizes` — what a fit at two batch
    sizes needs —, asked with one single-run query per size: reading every trial's history first took 0.9 s on
    the way to a demo's first trial, in a store of same-batch studies that gave no transfer."""
    ids = [exp.experiment_id for exp in map(client.get_experiment_by_name, experiments) if exp is not None]
    return bool(ids) and any(
        client.search_runs(ids, f"params.batch_size != '{size}' and tags.`{TRIAL_ID_TAG}` != ''", max_results=1)
        for size in sizes)


def plan_transfer(client: MlflowClient, experiments: list[str], plan: StudyPlan, explicit: bool) -> Transfer | None:
    """The study's transfer from `experiments` (named with --transfer-from when `explicit`, else the study's own
    experiment, used only where it holds two batch sizes or more); TransferError for a named source that gives
    no fit."""
    wanted = [t for t in targets(plan) if t.ranges]
    if not explicit and not holds_other_batch_sizes(client, experiments, {t.batch_size for t in wanted}):
        return None
    trials = source_trials(client, experiments, explicit)
    if trials is None:
        return None
    fits = [fit for target in wanted for fit in fit_target(trials, target)]
    if not fits and explicit:
        found = "; ".join(dict.fromkeys(what_was_found(trials, t) for t in wanted)) or "no searched lr or λ"
        raise TransferError(f"--transfer-from {','.join(experiments)}: a fit needs an optimizer's best values at two "
                            f"batch sizes or more; found {found}")
    return Transfer(experiments, fits, plan.space.num_samples) if fits else None
