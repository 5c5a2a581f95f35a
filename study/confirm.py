"""The confirm stage's trials: per variant, the best search configurations by the validation metric, each
re-run with fresh seeds. Chosen once, when the search ends, and saved in the study's record."""

from __future__ import annotations

import math
from typing import Any

from study.plan import SETTINGS_KEY, StudyPlan, settings_of

STAGE_KEY = "stage"  # a Tune config's stage, and the MLflow tag of its trial run
SEARCH, CONFIRM = "search", "confirm"


def stage_of(config: dict[str, Any]) -> str:
    return config.get(STAGE_KEY, SEARCH)


def search_score(result, metric: str, mode: str) -> float:
    """A finished search trial's best `metric` over its epochs (higher is better; -inf if it has none, or
    diverged or errored: never confirmed)."""
    frame = result.metrics_dataframe
    if result.error or frame is None or metric not in frame or (result.metrics or {}).get("status") == "diverged":
        return -math.inf
    values = frame[metric].dropna()
    if values.empty:
        return -math.inf
    return float(values.max() if mode == "max" else -values.min())


def fresh_seeds(search_seed: int, count: int) -> list[int]:
    """Seeds no search trial used (they all ran with `search_seed`)."""
    return [search_seed + 1 + i for i in range(count)]


def confirm_configs(results, plan: StudyPlan) -> list[dict[str, Any]]:
    """Complete Tune configs of the confirm stage: for each variant, its `confirm` best search trials, each
    with `seeds` fresh seeds (a variant with fewer usable trials confirms those it has)."""
    space = plan.space
    ranked: dict[str, list[tuple[float, dict[str, Any]]]] = {name: [] for name in space.variants}
    for result in results:
        score = search_score(result, space.metric, space.mode)
        if math.isfinite(score):
            ranked[result.config["variant"]].append((score, settings_of(result.config)))
    configs = []
    for variant, trials in ranked.items():
        for _, settings in sorted(trials, key=lambda t: t[0], reverse=True)[: space.confirm]:
            configs += [{"variant": variant, STAGE_KEY: CONFIRM, SETTINGS_KEY: {**settings, "seed": seed}}
                        for seed in fresh_seeds(int(settings["seed"]), space.seeds)]
    return configs
