"""Comparisons that decide: the gap between two variants' seeds, read at planned looks with intervals that
stay valid although the number of seeds depends on the data (optional stopping).

Method: a group-sequential design with alpha spending. The looks are at n = first, first + step, …, most
seeds per variant; look k spends α_k = α·(t_k^ρ − t_{k−1}^ρ) of the total α (t = n / most, ρ = 2: the
power-family spending function of Kim & DeMets / Jennison & Turnbull §7.3, between Pocock's ρ = 1 and
O'Brien–Fleming-like ρ ≈ 3) and reads the gap with a Welch interval at level 1 − α_k. By the union bound
the chance that any look's interval misses the true gap is ≤ Σ α_k = α whatever the dependence between
looks, so a verdict reached at any look is wrong with probability ≤ α (tested by simulation in
tests/test_sequential.py, where repeated 95% intervals are shown to exceed it). The exact joint
boundaries of Lan–DeMets would be narrower; they need a known variance, which 3–10 seeds do not give.

Numpy/scipy (and the records' names): the study decides with it as seeds arrive (`study.confirm`), the report replays it from
the recorded trials (`reports.tables`), so both read the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import numpy as np
import pandas as pd

from trainables.records import Stage, TrialStatus

ALPHA = 0.05  # the chance, over the whole sequence of looks, of any interval missing the true gap
SPENDING_POWER = 2.0


class Verdict(str, Enum):
    FIRST_BETTER = "first better"
    SECOND_BETTER = "second better"
    NO_DIFFERENCE = "no practical difference"
    OPEN = "open"

    def __str__(self) -> str:
        return self.value

    @property
    def decided(self) -> bool:
        return self is not Verdict.OPEN


@dataclass(frozen=True)
class Design:
    """When a comparison is read: after `first` seeds per variant, then every `step` more, up to `most`;
    a gap inside ±`practical_gap` points is no practical difference."""

    first: int
    most: int
    step: int = 2
    practical_gap: float = 1.0
    alpha: float = ALPHA

    @classmethod
    def fixed(cls, n: int, practical_gap: float = 1.0) -> "Design":
        """One look at `n` seeds: an ordinary Welch interval at level 1 − α."""
        return cls(first=n, most=n, step=1, practical_gap=practical_gap)

    @property
    def looks(self) -> list[int]:
        """Seeds per variant at each look."""
        inner = range(self.first, self.most, max(1, self.step))
        return [*inner, self.most] if self.most > self.first else [self.first]

    @property
    def sequential(self) -> bool:
        return len(self.looks) > 1

    def alpha_at(self, look: int) -> float:
        """The α spent at look `look` (0-based)."""
        looks = self.looks
        spent = [self.alpha * (n / looks[-1]) ** SPENDING_POWER for n in looks]
        spent[-1] = self.alpha  # exactly α over the design, whatever rounding the fractions carry
        return spent[look] - (spent[look - 1] if look else 0.0)

    def describe(self) -> str:
        if not self.sequential:
            return f"Welch 95% interval over {self.first} seeds per variant (one look)"
        return (f"group-sequential: looks at {', '.join(map(str, self.looks))} seeds per variant, α = {self.alpha} "
                f"spent as α·t^{SPENDING_POWER:g} (union bound over looks), Welch interval at each look's α; "
                f"no practical difference = inside ±{self.practical_gap:g} points")


@dataclass(frozen=True)
class Reading:
    """A comparison read at one look: first − second, its interval, the seeds each side had, the verdict."""

    gap: float
    low: float
    high: float
    n_first: int
    n_second: int
    look: int
    verdict: Verdict
    last_look: bool  # the design's last look: an open verdict stays open

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def still_possible(self) -> str:
        """What an open comparison's data still allow."""
        if math.isnan(self.low):
            return "no interval yet (fewer than 2 seeds on a side)"
        return f"gaps between {signed(self.low)} and {signed(self.high)} points remain possible"

    def line(self, name: str, first: str, second: str, looks: int) -> str:
        """One line for the study's console: 'LAMB: warm-up − none @ bs100: LAMB + warm-up better, +15.17 [+11.31,
        +19.03] (3/3 seeds, look 1/2)'."""
        verdict = verdict_text(self.verdict, first, second)
        interval = f"[{signed(self.low)}, {signed(self.high)}]" if math.isfinite(self.low) else "(no interval)"
        return (f"{name}: {verdict}, {signed(self.gap)} {interval} ({self.n_first}/{self.n_second} seeds, look "
                f"{self.look + 1}/{looks})" + ("" if self.verdict.decided else f"; {self.still_possible()}"))


def signed(value: float) -> str:
    """'+1.25', '−0.78' (a true minus)."""
    return format(value, "+.2f").replace("-", "−")


def welch_interval(first: np.ndarray, second: np.ndarray, alpha: float) -> tuple[float, float, float]:
    """(mean(first) − mean(second), low, high) of the two-sided Welch interval at level 1 − alpha (NaN ends
    with fewer than 2 values a side)."""
    gap = float(first.mean() - second.mean()) if len(first) and len(second) else math.nan
    if min(len(first), len(second)) < 2:
        return gap, math.nan, math.nan
    half = welch_half((first.var(ddof=1) / len(first), second.var(ddof=1) / len(second)),
                      (len(first), len(second)), alpha)
    return gap, gap - half, gap + half


def welch_half(se2: tuple[float, float], counts: tuple[int, int], alpha: float) -> float:
    """Half-width of the two-sided Welch interval at level 1 − alpha from each side's variance / n and n (NaN
    with fewer than 2 a side)."""
    if min(counts) < 2 or not math.isfinite(sum(se2)):
        return math.nan
    if sum(se2) == 0:
        return 0.0
    from scipy import stats  # here, not at the top: a study's driver imports this module before its first trial,
    # and SciPy's import (0.44 s on the 2-core CI machine) is needed only once seeds are compared

    dof = sum(se2) ** 2 / (se2[0] ** 2 / (counts[0] - 1) + se2[1] ** 2 / (counts[1] - 1))
    return float(stats.t.ppf(1 - alpha / 2, dof) * math.sqrt(sum(se2)))


def verdict_of(low: float, high: float, practical_gap: float) -> Verdict:
    """First better when the interval is above 0, second better when below, no practical difference when
    inside ±practical_gap, else open."""
    if low > 0:
        return Verdict.FIRST_BETTER
    if high < 0:
        return Verdict.SECOND_BETTER
    if -practical_gap < low and high < practical_gap:
        return Verdict.NO_DIFFERENCE
    return Verdict.OPEN


def read_at(first: list[float], second: list[float], design: Design, look: int) -> Reading:
    """The comparison at look `look`: each side's values of its first `looks[look]` seeds (in seed order;
    NaN = a seed without a result, left out)."""
    n = design.looks[look]
    a, b = (np.array([v for v in values[:n] if math.isfinite(v)], dtype=float) for values in (first, second))
    gap, low, high = welch_interval(a, b, design.alpha_at(look))
    verdict = verdict_of(low, high, design.practical_gap) if math.isfinite(low) else Verdict.OPEN
    return Reading(gap, low, high, len(a), len(b), look, verdict, look == len(design.looks) - 1)


def ready_looks(first: list[float | None], second: list[float | None], design: Design) -> int:
    """How many looks both sides' results (None = still running) allow."""
    done = min(_done_prefix(first), _done_prefix(second))
    return sum(1 for n in design.looks if n <= done)


def _done_prefix(values: list[float | None]) -> int:
    count = 0
    for value in values:
        if value is None:
            break
        count += 1
    return count


def replay(first: list[float], second: list[float], design: Design) -> Reading | None:
    """The sequential rule over a comparison's recorded seeds: the first decided look, else the last look
    the seeds reach (None when not even the first look's seeds exist on both sides)."""
    reading = None
    for look in range(ready_looks(first, second, design)):
        reading = read_at(first, second, design, look)
        if reading.verdict.decided:
            return reading
    return reading


# The named comparisons, (first row, second row, name) by the reports' row labels (`reports.collect.row_label`);
# positive gaps mean the first is better.
COMPARISONS = (("LARS + warm-up", "LARS", "LARS: warm-up − none"),
               ("LAMB + warm-up", "LAMB", "LAMB: warm-up − none"),
               ("TVLARS", "LARS + warm-up", "TVLARS − LARS + warm-up"),
               ("LAMBC + warm-up", "LAMB + warm-up", "LAMBC − LAMB (warm-up)"))


def design_for(seeds: int, max_seeds: int, seed_step: int, practical_gap: float, confirm: int = 1) -> Design:
    """A study's design from its budget: sequential when it confirms one configuration per variant (the one
    the later rounds re-run) and allows more seeds than the first round; else one look at `seeds`."""
    if confirm != 1 or max_seeds <= seeds:
        return Design.fixed(seeds, practical_gap)
    return Design(first=seeds, most=max_seeds, step=seed_step, practical_gap=practical_gap)


def verdict_text(verdict: Verdict, first: str, second: str) -> str:
    """'TVLARS better', 'LARS + warm-up better', 'no practical difference', 'open'."""
    return {Verdict.FIRST_BETTER: f"{first} better", Verdict.SECOND_BETTER: f"{second} better"}.get(verdict, str(verdict))


SETTING = ["task", "dataset", "model", "epochs", "batch_size"]  # a comparison pairs two rows at one setting
BUDGET_PARAM = "budget.{}"  # a study's budget on its parent MLflow run (`SearchSpace.describe`, flattened)
VERDICT_COLUMNS = ["comparison", *SETTING, "first", "second", "gap", "low", "high", "seeds", "look", "verdict",
                   "still_possible"]


def study_design_of(params: dict[str, str], seeds_seen: int) -> Design:
    """The design a study ran with, from its parent run's params (one look at the seeds seen for studies
    recorded before the sequential confirm)."""
    def number(key: str, default: float) -> float:
        return float(params.get(BUDGET_PARAM.format(key), default))

    seeds = int(number("seeds", seeds_seen))
    return design_for(seeds, int(number("max_seeds", seeds)), int(number("seed_step", 2)),
                      number("practical_gap", 1.0), int(number("confirm", 1)))


def seed_values(trials: pd.DataFrame, metric: str) -> list[float]:
    """A configuration's values in seed order (NaN where a seed did not complete)."""
    ordered = trials.sort_values("seed")
    ok = (ordered["status"] == TrialStatus.COMPLETED) & ordered[metric].notna()
    return [float(v) if good else math.nan for v, good in zip(ordered[metric], ok)]


def verdicts(trials: pd.DataFrame, designs: dict[str, Design], metric: str, config_of) -> pd.DataFrame:
    """Every named comparison of each study's confirmed runs, replayed by the rule the study decided with:
    per study (`designs`: study run id → its design) and setting, the two rows' confirmed configuration
    (`config_of(trials, metric)` picks it from a row's trials) read look by look."""
    confirmed = trials[trials["stage"] == Stage.CONFIRM]
    rows = []
    for (study, *setting), group in confirmed.groupby(["study_run_id", *SETTING], sort=False):
        by_label = {label: seed_values(config_of(t, metric), metric) for label, t in group.groupby("label")}
        design = designs.get(study) or Design.fixed(min(map(len, by_label.values())))  # a study without its record
        for first, second, name in COMPARISONS:
            if first in by_label and second in by_label:
                reading = replay(by_label[first], by_label[second], design)
                rows.append(_verdict_row(name, dict(zip(SETTING, setting)), first, second, reading, design))
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)


def _verdict_row(name: str, setting: dict, first: str, second: str, reading: Reading | None,
                 design: Design) -> dict:
    if reading is None:
        return {"comparison": name, **setting, "first": first, "second": second, "gap": math.nan, "low": math.nan,
                "high": math.nan, "seeds": "", "look": "", "verdict": str(Verdict.OPEN),
                "still_possible": f"not read: fewer than {design.first} seeds on a side"}
    ended_open = not reading.verdict.decided
    return {"comparison": name, **setting, "first": first, "second": second, "gap": reading.gap,
            "low": reading.low, "high": reading.high, "seeds": f"{reading.n_first}/{reading.n_second}",
            "look": f"{reading.look + 1}/{len(design.looks)}", "verdict": verdict_text(reading.verdict, first, second),
            "still_possible": reading.still_possible() if ended_open else ""}
