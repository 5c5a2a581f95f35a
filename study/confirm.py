"""The confirm stage's trials: a variant's best search configurations by the validation metric, each re-run
with fresh seeds to the full budget. Chosen by `study.tuner.StudySearch` once the variant's search has ended."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from study.plan import StudyPlan, to_tune
from trainables.config import TrialConfig
from trainables.records import STAGE_TAG, STATUS_KEY, Stage, TrialStatus

STAGE_KEY = STAGE_TAG  # a Tune config's stage is also the MLflow tag of its trial run


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
