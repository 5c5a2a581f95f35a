"""The confirm stage's trials: a variant's best search configurations by the validation metric, each re-run
with fresh seeds to the full budget. Chosen by `study.tuner.StudySearch` once the variant's search has ended."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from reports.collect import METRIC as TEST_METRIC, VAL_METRIC, chosen_epoch, row_label
from reports.sequential import COMPARISONS, SETTING, Design, Reading, design_for, read_at, ready_looks
from study.plan import StudyPlan, from_tune, to_tune
from trainables.config import TrialConfig
from trainables.records import STAGE_TAG, STATUS_KEY, Stage, TrialStatus

STAGE_KEY = STAGE_TAG  # a Tune config's stage is also the MLflow tag of its trial run
TEST_PREFIX = "test_"  # test-set metrics: reported and recorded, never seen by what makes the study's choices


def stage_of(config: dict[str, Any]) -> Stage:
    """A Tune config's stage (search unless the confirm stage made it)."""
    return Stage(config.get(STAGE_KEY, Stage.SEARCH))


@dataclass
class SearchTrial:
    """What the search learns of one trial: its variant and settings, its best validation score (higher is
    better whatever the mode; -inf until it reports one), and whether it ended fit to confirm."""

    variant: str
    settings: TrialConfig
    score: float = -math.inf
    ended: bool = False
    usable: bool = True  # not errored, not diverged

    def seen(self, result: dict[str, Any], metric: str, mode: str) -> None:
        value = result.get(metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            self.score = max(self.score, value if mode == "max" else -value)
        if result.get(STATUS_KEY) == TrialStatus.DIVERGED:
            self.usable = False

    def end(self, result: dict[str, Any] | None, error: bool, metric: str, mode: str) -> None:
        if result:
            self.seen(result, metric, mode)
        self.ended, self.usable = True, self.usable and not error


def fresh_seeds(search_seed: int, count: int) -> list[int]:
    """Seeds no search trial used (they all ran with `search_seed`)."""
    return [search_seed + 1 + i for i in range(count)]


def confirm_configs(variant: str, trials: list[SearchTrial], plan: StudyPlan) -> list[dict[str, Any]]:
    """Complete Tune configs of `variant`'s confirm trials: its `confirm` best usable search trials, each with
    `seeds` fresh seeds (fewer if fewer search trials reported a validation score)."""
    space = plan.space
    ranked = sorted((t for t in trials if t.usable and math.isfinite(t.score)), key=lambda t: t.score, reverse=True)
    return [to_tune(variant, dataclasses.replace(t.settings, seed=seed), **{STAGE_KEY: Stage.CONFIRM.value})
            for t in ranked[: space.confirm] for seed in fresh_seeds(t.settings.seed, space.seeds)]


@dataclass
class Pair:
    """A named comparison of two variants at one setting, and where its reading stands."""

    name: str
    first: str  # variant names
    second: str
    labels: tuple[str, str]  # their report rows (e.g. "TVLARS", "LARS + warm-up")
    looks_read: int = 0
    reading: Reading | None = None
    closed: bool = False


def comparisons(plan: StudyPlan) -> list[Pair]:
    """The space's named comparisons: every `reports.sequential.COMPARISONS` pair of rows its variants hold at
    one setting (e.g. TVLARS − LARS + warm-up at batch 1,024)."""
    rows: dict[tuple[str, tuple], str] = {}
    for draw in plan.space.corner_draws(frozenset(plan.overrides))[::2]:
        settings = plan.trial_config(draw).to_dict()
        rows.setdefault((row_label(settings), tuple(settings[k] for k in SETTING)), draw["variant"])
    settings = dict.fromkeys(s for _, s in rows)
    return [Pair(f"{name} @ bs{setting[-1]}", rows[(first, setting)], rows[(second, setting)], (first, second))
            for setting in settings for first, second, name in COMPARISONS
            if (first, setting) in rows and (second, setting) in rows]


def study_design(plan: StudyPlan) -> Design:
    space = plan.space
    return design_for(space.seeds, space.max_seeds, space.seed_step, space.practical_gap, space.confirm)


class SeedRounds:
    """The sequential confirm: each variant's confirmed configuration gets its first round of seeds, then, for
    as long as a comparison it is in is open, `seed_step` more at a time; each comparison is read (and
    frozen once decided) as soon as both its variants' seeds of a look have ended. The value of a confirm
    trial is the report's: its test top-1 at the epoch its validation top-1 chose (the quantity the verdict
    is about; no hyperparameter is chosen from it)."""

    def __init__(self, plan: StudyPlan):
        self.plan, self.design = plan, study_design(plan)
        self.pairs = comparisons(plan) if plan.space.confirm == 1 else []  # one configuration per row to compare
        self.chosen: dict[str, TrialConfig] = {}  # variant → its confirmed configuration
        self.values: dict[str, list[float | None]] = {}  # variant → per seed (in seed order): value, None = running
        self.trials: dict[str, tuple[str, int]] = {}  # confirm trial id → (variant, seed index)
        self.history: dict[str, list[tuple[int, float, float]]] = {}  # trial id → (epoch, val, test) per evaluation
        self.closed_now: list[Pair] = []  # comparisons closed by the last ended trial (the console prints them)

    def first_round(self, variant: str, trials: list[SearchTrial]) -> list[dict[str, Any]]:
        """The variant's first confirm trials (`confirm_configs`); remembers the configuration later rounds re-run."""
        configs = confirm_configs(variant, trials, self.plan)
        if configs:
            self.chosen[variant] = from_tune(configs[0])
            self.values[variant] = [None] * self.plan.space.seeds
        return configs

    def started(self, trial_id: str, config: dict[str, Any]) -> None:
        variant, seed = config["variant"], from_tune(config).seed
        index = seed - self.chosen[variant].seed if variant in self.chosen else -1
        if 0 <= index and self._same_configuration(variant, config):
            self.trials[trial_id] = (variant, index)
            values = self.values.setdefault(variant, [])
            values += [None] * (index + 1 - len(values))

    def _same_configuration(self, variant: str, config: dict[str, Any]) -> bool:
        return dataclasses.replace(from_tune(config), seed=0) == dataclasses.replace(self.chosen[variant], seed=0)

    def seen(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id in self.trials and TEST_METRIC in result:
            self.history.setdefault(trial_id, []).append(
                (int(result.get("epoch", 0)), result.get(VAL_METRIC, math.nan), result[TEST_METRIC]))

    def ended(self, trial_id: str, error: bool) -> list[dict[str, Any]]:
        """Record a confirm trial's value; returns the next round's configs the readings call for."""
        if trial_id not in self.trials:
            return []
        variant, index = self.trials[trial_id]
        self.values[variant][index] = math.nan if error else self._value(trial_id)
        return self._read()

    def _value(self, trial_id: str) -> float:
        history = self.history.get(trial_id, [])
        test = [(e, t) for e, _, t in history if math.isfinite(t)]
        val = [(e, v) for e, v, t in history if math.isfinite(v) and math.isfinite(t)]
        epoch = chosen_epoch(test, val)
        return dict(test).get(epoch, math.nan)

    def _read(self) -> list[dict[str, Any]]:
        more: list[dict[str, Any]] = []
        self.closed_now = []
        for pair in (p for p in self.pairs if not p.closed):
            first, second = self.values.get(pair.first, []), self.values.get(pair.second, [])
            while not pair.closed and pair.looks_read < ready_looks(first, second, self.design):
                pair.reading = read_at(first, second, self.design, pair.looks_read)
                pair.looks_read += 1
                pair.closed = pair.reading.verdict.decided or pair.reading.last_look
                self.closed_now += [pair] * pair.closed
            if not pair.closed and pair.looks_read:
                more += self._round(pair.first, pair.looks_read) + self._round(pair.second, pair.looks_read)
        return more

    def _round(self, variant: str, look: int) -> list[dict[str, Any]]:
        """`variant`'s seeds up to look `look`'s count, beyond those already handed out."""
        given, wanted = len(self.values.get(variant, [])), self.design.looks[look]
        base = self.chosen[variant]
        configs = [to_tune(variant, dataclasses.replace(base, seed=base.seed + i), **{STAGE_KEY: Stage.CONFIRM.value})
                   for i in range(given, wanted)]
        self.values.setdefault(variant, []).extend([None] * len(configs))
        return configs

    def verdict_lines(self) -> list[str]:
        """The console lines of the comparisons the last ended trial closed."""
        return [f"verdict: {p.reading.line(p.name, *p.labels, len(self.design.looks))}" for p in self.closed_now]

    def settled(self) -> bool:
        """No confirm trial running and no comparison waiting for seeds."""
        return all(v is not None for values in self.values.values() for v in values)
