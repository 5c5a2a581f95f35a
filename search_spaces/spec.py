"""Declarative study definitions: fixed settings, searched hyperparameters, objective, budget, resources.

A space has one or more *variants* (an optimizer setting — a `Family`: TVLARS, LARS with warm-up, LAMB … — at
a batch size; `by_batch` makes the product) that share the space's fixed settings and add their own;
each variant searches its own hyperparameters with its own budget: `num_samples` trials per variant,
taken in turn, so no variant is starved by chance. Sampling is an Optuna define-by-run function, so a
variant's parameters exist only for its trials and a bound may depend on an earlier draw (`at_most`:
the clipping bounds μ ≤ τ hold by construction). The search selects on a validation metric; the
confirm stage re-runs the `confirm` best configurations of each variant with `seeds` fresh seeds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trainables.records import SEARCH_VARIANT_ATTR


def param_name(variant: str, key: str) -> str:
    """A searched value's Optuna name: prefixed by its variant, so TPE models each variant's trials apart."""
    return f"{variant}/{key}"


@dataclass(frozen=True)
class Float:
    key: str
    low: float
    high: float
    log: bool = False
    at_most: str | None = None  # upper bound also ≤ the value already drawn for this key

    def suggest(self, trial, prefix: str, drawn: dict[str, Any]) -> float:
        high = min(self.high, drawn[self.at_most]) if self.at_most else self.high
        return trial.suggest_float(param_name(prefix, self.key), self.low, max(high, self.low), log=self.log)

    def extremes(self) -> list[float]:
        return [self.low, self.high]


@dataclass(frozen=True)
class Int:
    key: str
    low: int
    high: int

    def suggest(self, trial, prefix: str, drawn: dict[str, Any]) -> int:
        return trial.suggest_int(param_name(prefix, self.key), self.low, self.high)

    def extremes(self) -> list[int]:
        return [self.low, self.high]


@dataclass(frozen=True)
class Choice:
    key: str
    values: tuple

    def suggest(self, trial, prefix: str, drawn: dict[str, Any]) -> Any:
        return trial.suggest_categorical(param_name(prefix, self.key), list(self.values))

    def extremes(self) -> list[Any]:
        return list(self.values)


Param = Float | Int | Choice


@dataclass(frozen=True)
class Variant:
    """One optimizer setting of a space: its fixed keys and its searched hyperparameters."""

    fixed: dict[str, Any]
    searched: tuple[Param, ...] = ()


@dataclass(frozen=True)
class Family:
    """An optimizer setting written once (`search_spaces.families`): optimizer, its fixed hyperparameters, scheduler."""

    name: str
    description: str  # one line
    fixed: dict[str, Any]
    searched: tuple[Param, ...] = ()  # searched wherever the family is used; ranges that vary are each space's

    def variant(self, *searched: Param, **fixed: Any) -> Variant:
        """This setting in a space: the space's own fixed settings added, its searched parameters after the family's."""
        return Variant({**self.fixed, **fixed}, self.searched + searched)


def by_batch(variants: dict[str, Variant], batch_sizes: tuple[int, ...],
             searched: Callable[[int], tuple[Param, ...]] = lambda size: ()) -> dict[str, Variant]:
    """Every variant at every batch size (`<name>_bs<size>`), each batch adding `searched(size)` (e.g. its lr range)."""
    return {f"{name}_bs{size}": Variant({**variant.fixed, "batch_size": size}, variant.searched + searched(size))
            for size in batch_sizes for name, variant in variants.items()}


RESOURCE_KEYS = ("workers", "gpus_per_worker", "cpus_per_worker", "max_concurrent")
BUDGET_KEYS = ("num_samples", "grace_period", "reduction_factor", "confirm", "seeds", "max_seeds", "seed_step",
               "practical_gap")
VALIDATION_METRIC = "val_top1"  # what a study selects on (the test set only reports)


@dataclass(frozen=True)
class SearchSpace:
    name: str
    description: str
    fixed: dict[str, Any]
    variants: dict[str, Variant]
    metric: str = VALIDATION_METRIC
    mode: str = "max"
    scheduler_metric: tuple[str, str] | None = None  # (metric, mode) for ASHA if not the objective
    num_samples: int = 12  # search trials per variant
    confirm: int = 1  # best configurations per variant re-run after the search (0: no confirm stage)
    seeds: int = 3  # fresh seeds of each confirmed configuration: the sequential confirm's first round
    # The sequential confirm (`reports.sequential`): while a comparison of two variants (warm-up − none, TVLARS −
    # LARS + warm-up, … at one batch) is open, both get `seed_step` more seeds, up to `max_seeds` each; a gap
    # inside ±`practical_gap` points is no practical difference. `max_seeds` = `seeds`: one fixed round.
    max_seeds: int = 10
    seed_step: int = 2
    practical_gap: float = 1.0
    grace_period: int = 10
    reduction_factor: int = 3
    workers: int = 1
    gpus_per_worker: float = 1.0
    cpus_per_worker: float = 4.0
    max_concurrent: int | None = None
    searched: tuple[Param, ...] = field(default=())  # shared by every variant

    @property
    def total_samples(self) -> int:
        """Search trials in all: `num_samples` per variant."""
        return self.num_samples * len(self.variants)

    def draw(self, trial, fixed: frozenset[str] = frozenset()) -> dict[str, Any]:
        """Optuna define-by-run sampling: the trial's variant (the one its study enqueued it for, else the
        variants take turns by Optuna's trial number), then the variant's hyperparameters are drawn (except
        `fixed` keys) — by TPE from that variant's own trials, since every name is prefixed by its variant
        (values enqueued with the trial are taken as given); returns the draw in Tune's form,
        `{"variant": name, name: {key: value}}`."""
        names = list(self.variants)
        variant = trial.user_attrs.get(SEARCH_VARIANT_ATTR) or names[trial.number % len(names)]
        trial.set_user_attr(SEARCH_VARIANT_ATTR, variant)
        drawn: dict[str, Any] = {}
        for param in self.searched + self.variants[variant].searched:
            if param.key not in fixed:
                drawn[param.key] = param.suggest(trial, variant, drawn)
        return {"variant": variant, variant: drawn}

    def settings(self, sampled: dict[str, Any], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """One trial's flat settings from a draw (`{variant, <variant>: {...}}`, as `draw` makes them)."""
        variant = sampled.get("variant", next(iter(self.variants)))
        config = {**self.fixed, **self.variants[variant].fixed, **sampled.get(variant, {})}
        config.update(overrides or {})
        return config

    def corner_draws(self, fixed: frozenset[str]) -> list[dict[str, Any]]:
        """Tune-style samples at every variant's lowest and highest draws (to validate before a study starts)."""
        draws = []
        for name, variant in self.variants.items():
            params = [p for p in self.searched + variant.searched if p.key not in fixed]
            for pick in (0, -1):
                draws.append({"variant": name, name: {p.key: p.extremes()[pick] for p in params}})
        return draws

    def describe(self) -> dict[str, Any]:
        """A JSON-able definition (logged with every study)."""
        def param(p: Param) -> dict[str, Any]:
            return {"type": type(p).__name__, **dataclasses.asdict(p)}

        return {
            "name": self.name, "description": self.description, "fixed": self.fixed,
            "variants": {k: {"fixed": v.fixed, "searched": [param(p) for p in v.searched]}
                         for k, v in self.variants.items()},
            "searched": [param(p) for p in self.searched],
            "objective": {"metric": self.metric, "mode": self.mode, "scheduler_metric": self.scheduler_metric},
            "budget": {k: getattr(self, k) for k in BUDGET_KEYS},
            "resources": {k: getattr(self, k) for k in RESOURCE_KEYS},
        }
