"""`StudyPlan`: a search space plus the command line's overrides, checked before anything starts."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

from optim import OPTIMIZERS
from optim.factory import trial_hparams
from search_spaces import get_space
from search_spaces.spec import BUDGET_KEYS, RESOURCE_KEYS, SearchSpace
from trainables.batches import resolve_batching
from trainables.config import TrialConfig
from trainables.records import SETTING_NAMES
from trainables.data import data_dir_for, input_size
from trainables.models import check_model_fits

_INT_KEYS = {"num_samples", "grace_period", "reduction_factor", "workers", "max_concurrent", "confirm", "seeds",
             "max_seeds", "seed_step"}
_FLOAT_KEYS = {"gpus_per_worker", "cpus_per_worker", "practical_gap"}
_MINIMUM = {"gpus_per_worker": 0, "confirm": 0, "practical_gap": 0,
            "reduction_factor": 2}  # ASHA keeps 1/reduction_factor of the trials at each rung: 1 would keep them all
# Optuna's TPESampler seeds numpy's RandomState, which takes [0, 2**32): a seed outside failed the study once started.
SAMPLER_SEEDS = range(2**32)


def parse_value(text: str) -> Any:
    """`--set` values: JSON literals (numbers, true/false, null, lists) or else plain strings."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_sets(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set: expected key=value, got {item!r}")
        out[key.strip()] = parse_value(value.strip())
    return out


@dataclass
class StudyPlan:
    space: SearchSpace
    overrides: dict[str, Any] = field(default_factory=dict)  # fixed trial settings from --set / flags
    capacity: int | None = None  # trials the cluster holds at once (study.cluster), when known
    budget: dict[str, Any] = field(default_factory=dict)  # budget, resources and variants given (--set / flags)

    @property
    def given(self) -> dict[str, Any]:
        """Everything the command line set, as `make_plan` takes it back (what `--resume` replays)."""
        return {**self.overrides, **self.budget}

    @property
    def max_epoch(self) -> int:
        """The epochs a trial reports at most (Barlow Twins adds its linear evaluation's)."""
        shared = self.shared()
        return shared.epochs + (shared.linear_epochs if shared.task == "bt" else 0)

    @property
    def concurrency(self) -> int:
        return self.space.max_concurrent or self.capacity or 1

    def threads_per_worker(self) -> int:
        cores = os.cpu_count() or 1
        return max(1, cores // (self.space.workers * self.concurrency)) if not self.space.gpus_per_worker else 1

    def overrides_for(self, variant: str) -> dict[str, Any]:
        """The overrides that apply to `variant` (an optimizer hyperparameter only where its optimizer has it)."""
        optimizer = _optimizer(self, variant)
        return {k: v for k, v in self.overrides.items() if k in TRIAL_FIELDS or _hyperparameter_of(k, optimizer)}

    def trial_config(self, draw: dict[str, Any]) -> TrialConfig:
        """A trial's checked settings from a draw (`{"variant": name, name: {...}}`) and the overrides (its data
        folder is checked where the trial runs)."""
        variant = draw["variant"]
        settings = self.space.settings(draw, self.overrides_for(variant))
        settings.setdefault("threads", self.threads_per_worker())
        config = TrialConfig.from_dict(settings, check_data=False)  # every setting's range before batching divides
        if config.task != "clf":
            return config
        micro, bn_group = resolve_batching(config.batch_size, self.space.workers, config.micro_batch_size,
                                           config.bn_group, on_gpu=bool(self.space.gpus_per_worker))
        return dataclasses.replace(config, micro_batch_size=micro, bn_group=bn_group)  # so a trial records what ran

    def shared(self) -> TrialConfig:
        """A trial's settings at the first variant's lowest draw: what all trials share (dataset, epochs, …)."""
        return self.trial_config(self.space.corner_draws(frozenset(self.overrides))[0])

    def define_by_run(self, trial) -> dict[str, Any]:
        """Ray's OptunaSearch space: draw a trial and return its Tune config (`to_tune`), which Ray merges into
        the trial's (as in Ray's Optuna define-by-run example) — the trial, its MLflow record and the summary
        read its settings back from there (`from_tune`) instead of deriving them again."""
        draw = self.space.draw(trial, frozenset(self.overrides))
        return to_tune(draw["variant"], self.trial_config(draw))


def make_plan(space_name: str, sets: dict[str, Any], *, num_samples: int | None = None, epochs: int | None = None,
              seed: int | None = None, data_dir: str | None = None, confirm: int | None = None,
              seeds: int | None = None, max_seeds: int | None = None,
              variants: list[str] | None = None) -> StudyPlan:
    """Resolve a space with overrides; raise ValueError naming the bad input before any work."""
    if seed is not None and seed not in SAMPLER_SEEDS:
        raise ValueError(f"--seed: must be in [0, 2**32), got {seed}")
    space = get_space(space_name)
    chosen = sets.pop(VARIANTS_KEY, None) or variants
    if chosen:
        space = dataclasses.replace(space, variants=_chosen_variants(space, chosen))
    budget = {k: sets.pop(k) for k in list(sets) if k in BUDGET_KEYS + RESOURCE_KEYS}
    for key, flag in (("num_samples", num_samples), ("confirm", confirm), ("seeds", seeds), ("max_seeds", max_seeds)):
        if flag is not None:
            budget[key] = flag
    for key, value in budget.items():
        wanted = int if key in _INT_KEYS else float
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (wanted is int and not isinstance(value, int)):
            raise ValueError(f"{key}: expected {wanted.__name__}, got {value!r}")
        if value < _MINIMUM.get(key, 1):
            raise ValueError(f"{key}: must be >= {_MINIMUM.get(key, 1)}, got {value}")
    space = dataclasses.replace(space, **budget)
    if "seeds" in budget and "max_seeds" not in budget:  # --seeds alone: the first round, at most the space's bound
        space = dataclasses.replace(space, max_seeds=max(space.max_seeds, space.seeds))
    if space.max_seeds < space.seeds:
        raise ValueError(f"max_seeds: must be >= seeds ({space.seeds}), got {space.max_seeds}")
    overrides = dict(sets)
    if epochs is not None:
        overrides["epochs"] = epochs
    if seed is not None:  # `--set seed=` / `--set split_seed=` keep theirs: the sampler's seed alone then varies
        overrides.setdefault("seed", seed)
        overrides.setdefault("split_seed", seed)  # every trial of the study, confirm ones too, holds out the same images
    dataset = {**space.fixed, **overrides}.get("dataset", "cifar10")
    overrides["data_dir"] = overrides.get("data_dir") or data_dir_for(dataset, data_dir)
    plan = StudyPlan(space, overrides, budget=budget | ({VARIANTS_KEY: list(space.variants)} if chosen else {}))
    optimizers = {v.fixed.get("optimizer", space.fixed.get("optimizer")) for v in space.variants.values()}
    for key in overrides:
        if key not in TRIAL_FIELDS and not any(_hyperparameter_of(key, o) for o in optimizers):
            raise ValueError(f"{key}: not a trial setting nor a hyperparameter of this space's optimizers "
                             f"({', '.join(sorted(map(str, optimizers)))})")
    check_variants(plan, lambda cfg: check_runs_here(cfg, plan.space.gpus_per_worker))  # and from_dict's checks
    check_something_searched(plan)
    if space.grace_period > plan.max_epoch:
        plan.space = dataclasses.replace(space, grace_period=plan.max_epoch)
    check_evaluations(plan)
    return plan


VARIANTS_KEY = "variants"  # --variants / --set variants=: run only these of the space's variants


def check_variants(plan: StudyPlan, check: Callable[[TrialConfig], None]) -> None:
    """`check` each variant's settings at its lowest and highest draws; a ValueError is raised again naming
    the variant and, when the setting at fault is not one the command line set, where it comes from and
    the fixes."""
    for draw in plan.space.corner_draws(frozenset(plan.overrides)):
        variant = draw["variant"]
        try:
            check(plan.trial_config(draw))
        except ValueError as err:
            raise ValueError(f"variant {variant}: {err}{_fixes(plan, variant, str(err))}") from None


def check_something_searched(plan: StudyPlan) -> None:
    """A variant whose every searched hyperparameter the command line fixed has one configuration, trained with one
    seed: more than one search trial of it would repeat one result (it once ran num_samples identical trials)."""
    space = plan.space
    searched = {name: [p.key for p in space.searched + v.searched] for name, v in space.variants.items()}
    idle = [name for name, keys in searched.items() if keys and all(key in plan.overrides for key in keys)]
    if space.num_samples == 1 or not idle:
        return
    fixed = ", ".join(dict.fromkeys(key for name in idle for key in searched[name]))
    others = ",".join(v for v in space.variants if v not in idle)
    raise ValueError(f"variant{'s' * (len(idle) > 1)} {', '.join(idle)}: nothing left to search (--set fixes {fixed}), "
                     f"so {space.num_samples} search trials each would train one configuration alike; pass "
                     "--num-samples 1 (confirm trials repeat it with fresh seeds)"
                     + (f", or leave {'them' if len(idle) > 1 else 'it'} out: --variants {others}" if others else ""))


def check_runs_here(config: TrialConfig, gpus_per_worker: float) -> None:
    """What a trial's settings pass and it would still fail on: its device, its model at its images' size."""
    check_device(config, gpus_per_worker)
    side = input_size(config.dataset, config.image_size)
    if side is not None:
        check_model_fits(config.model, side, backbone=config.task == "bt")


def check_device(config: TrialConfig, gpus_per_worker: float) -> None:
    """device=cuda needs the GPU Ray gives a worker: without one every trial failed once started."""
    if config.device == "cuda" and not gpus_per_worker:
        raise ValueError("device: 'cuda' needs a GPU for each worker, but gpus_per_worker=0; set "
                         "--set gpus_per_worker=1, or device=auto (a GPU where the worker has one)")


def _fixes(plan: StudyPlan, variant: str, error: str) -> str:
    """Where the setting an error names comes from, and how to change it or leave its variant out ('' when the
    command line set it: the error is already about the user's own value)."""
    key = error.partition(":")[0]
    if key in plan.overrides or not (key in TRIAL_FIELDS or _hyperparameter_of(key, _optimizer(plan, variant))):
        return ""
    space, fixed = plan.space, plan.space.variants[variant].fixed
    searched = any(p.key == key for p in space.searched + space.variants[variant].searched)
    origin = (f"variant {variant} sets {key}={fixed[key]}" if key in fixed else
              f"variant {variant} searches {key}" if searched else
              f"space {space.name} sets {key}={space.fixed[key]}" if key in space.fixed else f"{key} is a default")
    others = [v for v in space.variants if v != variant]
    own = key in fixed or searched  # a space's setting or a default fails every variant alike
    leave_out = f", or leave the variant out: --variants {','.join(others)}" if own and others else ""
    return f" ({origin}, not your command line); fix: --set {key}=<a value that fits>{leave_out}"


def _optimizer(plan: StudyPlan, variant: str) -> str | None:
    return {**plan.space.fixed, **plan.space.variants[variant].fixed, **plan.overrides}.get("optimizer")


def _chosen_variants(space: SearchSpace, chosen: list[str] | str) -> dict[str, Any]:
    names = chosen.split(",") if isinstance(chosen, str) else list(chosen)
    unknown = [n for n in names if n not in space.variants]
    if unknown:
        raise ValueError(f"--variants: {unknown[0]!r} is not a variant of {space.name}; choose from "
                         f"{', '.join(space.variants)}")
    return {name: space.variants[name] for name in names}


def check_evaluations(plan: StudyPlan) -> None:
    """ASHA compares trials at grace_period × reduction_factor^k epochs: each must be an evaluated epoch."""
    every = int({**plan.space.fixed, **plan.overrides}.get("eval_every", TrialConfig.eval_every))
    grace = plan.space.grace_period
    if grace % every and grace != plan.max_epoch:
        raise ValueError(f"eval_every: ASHA compares trials at epoch {grace} (grace_period) and its multiples by "
                         f"{plan.space.reduction_factor}; eval_every={every} must divide {grace}")


SETTINGS_KEY = "settings"  # where a Tune config holds the trial's complete settings
VARIANT_KEY = "variant"  # and its variant


def to_tune(variant: str, cfg: TrialConfig, **tune_keys: Any) -> dict[str, Any]:
    """A trial's Tune config: its variant, its settings as plain values (Tune merges, logs and pickles configs)
    and Tune-side keys (stage, name). `from_tune` is the one way back."""
    return {VARIANT_KEY: variant, SETTINGS_KEY: cfg.to_dict(), **tune_keys}


def from_tune(config: dict[str, Any]) -> TrialConfig:
    """The checked trial settings in a Tune config made by `to_tune`."""
    return TrialConfig.from_dict(config[SETTINGS_KEY], check_data=False)


TRIAL_FIELDS = SETTING_NAMES


def _hyperparameter_of(key: str, optimizer: str | None) -> bool:
    return optimizer in OPTIMIZERS and key in trial_hparams(optimizer)


def in_actor(plan: StudyPlan) -> bool:
    """Whether trials train inside their Tune actor (one worker) rather than as a Ray Train job."""
    return plan.space.workers == 1
