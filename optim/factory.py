"""`build_optimizer(name, params, exclude=..., **hparams)`: the one way the platform makes an optimizer.

Every hyperparameter is checked before the optimizer exists: an unknown name or a bad value raises
ValueError naming the field. Baselines are torch.optim's own classes; `exclude_1d` gives their excluded
tensors no weight decay, as it gives the layer-wise optimizers' no weight decay and no trust ratio. Which
tensors are excluded: those named in `exclude` (`optim.exclusions.excluded_names(model)`: norm layers,
biases, class tokens, position embeddings), or without it those with at most one dimension.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import Optimizer

from optim.checks import Check, check_hparams, unit_interval
from optim.clars import CLARS
from optim.lamb import LAMB
from optim.lambc import LAMBC
from optim.larc import LARC
from optim.lars import LARS
from optim.layerwise import LayerwiseOptimizer, ParamsLike, as_groups, normalize_params, split_1d_groups
from optim.tvlars import TVLARS, delay_steps_from_epochs

# torch.optim arguments the platform does not expose: `maximize` flips the objective (a trial minimises its loss);
# `capturable`, `differentiable` and `fused` pick how the step runs (CUDA graphs, autograd through the step, fused
# kernels), not the method; `decoupled_weight_decay` makes Adam AdamW (use `adamw`); Adagrad's
# `initial_accumulator_value` was never a search dimension. (`foreach` stays: a plain switch, checked as a flag.)
NOT_EXPOSED = frozenset({"maximize", "capturable", "differentiable", "fused", "decoupled_weight_decay",
                         "initial_accumulator_value"})


def constructor_hparams(cls: type[Optimizer]) -> dict[str, Any]:
    """`cls`'s keyword parameters but `self` and `params`, with their defaults; where `cls` hands `**kwargs` on
    to a parent optimizer's constructor (TVLARS, CLARS, LAMBC), the parent's too (the subclass's defaults win)."""
    signature = inspect.signature(cls.__init__).parameters.values()
    own = {p.name: p.default for p in signature
           if p.name not in ("self", "params") and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    owner = next(c for c in cls.__mro__ if "__init__" in vars(c))
    parent = next(c for c in owner.__mro__[1:] if "__init__" in vars(c))
    passes_on = any(p.kind is p.VAR_KEYWORD for p in signature)
    if passes_on and parent is not LayerwiseOptimizer:  # LARS' **extra goes into the base's `defaults` dict
        return {**constructor_hparams(parent), **own}
    return own


@dataclass(frozen=True)
class OptimSpec:
    """What the platform knows about one optimizer: its class, a description, checks replacing `CHECKS`' for
    it, and the settings a trial may give in epochs (name → the optimizer's own step-denominated name and
    converter). Its hyperparameters and their defaults (`defaults`) come from the class's constructor."""

    cls: type[Optimizer]
    description: str
    in_epochs: dict[str, tuple[str, Callable[[float, int], int]]] = dataclasses.field(default_factory=dict)
    checks: dict[str, Check] = dataclasses.field(default_factory=dict)
    defaults: dict[str, Any] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        defaults = {k: v for k, v in constructor_hparams(self.cls).items()
                    if k not in NOT_EXPOSED or self.layerwise}  # the layer-wise `fused` is ours (optim.fused)
        if not self.layerwise:  # the factory gives baselines the layer-wise optimizers' 1-D exclusion
            defaults["exclude_1d"] = constructor_hparams(LayerwiseOptimizer)["exclude_1d"]
        object.__setattr__(self, "defaults", defaults)

    @property
    def layerwise(self) -> bool:
        """A trust-ratio optimizer of this package (else a torch.optim baseline)."""
        return issubclass(self.cls, LayerwiseOptimizer)

    @property
    def hparams(self) -> frozenset[str]:
        """The hyperparameter names the class takes (through the factory, for baselines' `exclude_1d`)."""
        return frozenset(self.defaults)

    def to_steps(self, hparams: dict[str, Any], steps_per_epoch: int) -> dict[str, Any]:
        """`hparams` with every epoch-denominated setting converted to the optimizer's steps."""
        converted = dict(hparams)
        for name, (step_name, convert) in self.in_epochs.items():
            if name in converted:
                value = converted.pop(name)
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"{name}: must be a number >= 0, got {value!r}")
                converted[step_name] = convert(value, steps_per_epoch)
        return converted


SPECS: dict[str, OptimSpec] = {
    "lars": OptimSpec(LARS, "LARS: layer-wise trust ratio η‖w‖/‖d‖ with momentum"),
    "larc": OptimSpec(LARC, "LARC: LARS with the local lr clipped at the global lr"),
    "tvlars": OptimSpec(TVLARS, "TVLARS: LARS with the trust ratio scaled by φ(t), no warm-up",
                        in_epochs={"delay_epochs": ("delay_steps", delay_steps_from_epochs)}),
    "clars": OptimSpec(CLARS, "CLARS: per-sample gradient norms in the trust ratio"),
    "lamb": OptimSpec(LAMB, "LAMB: Adam's update scaled by a layer-wise trust ratio"),
    "lambc": OptimSpec(LAMBC, "LAMBC: LAMB with the trust ratio clipped to [μ, τ]"),
    "sgd": OptimSpec(torch.optim.SGD, "torch SGD (momentum)"),
    "adam": OptimSpec(torch.optim.Adam, "torch Adam"),
    "adamw": OptimSpec(torch.optim.AdamW, "torch AdamW"),
    "adagrad": OptimSpec(torch.optim.Adagrad, "torch Adagrad"),
    # RMSprop's `alpha` is a squared-gradient EMA decay, in [0, 1); TVLARS' `alpha` (CHECKS') is φ's offset > 0.
    "rmsprop": OptimSpec(torch.optim.RMSprop, "torch RMSprop", checks={"alpha": unit_interval}),
}
LAYERWISE = {name: spec for name, spec in SPECS.items() if spec.layerwise}
BASELINES = {name: spec for name, spec in SPECS.items() if not spec.layerwise}
OPTIMIZERS = SPECS


def optimizer_hparams(name: str) -> set[str]:
    """The hyperparameter names `build_optimizer(name, ...)` accepts."""
    return set(spec_of(name).hparams)


def trial_hparams(name: str) -> set[str]:
    """The hyperparameter names a trial may set for optimizer `name`: `optimizer_hparams` and those in epochs."""
    return optimizer_hparams(name) | set(spec_of(name).in_epochs)


def spec_of(name: str) -> OptimSpec:
    if name not in SPECS:
        raise ValueError(f"optimizer: unknown {name!r}; choose one of {', '.join(SPECS)}")
    return SPECS[name]


def validate_hparams(name: str, hparams: dict[str, Any]) -> None:
    """Raise ValueError naming the first unknown or invalid field; no optimizer is built."""
    spec = spec_of(name)
    unknown = sorted(set(hparams) - spec.hparams)
    if unknown:
        raise ValueError(f"{unknown[0]}: not a hyperparameter of {name!r}; allowed: {', '.join(sorted(spec.hparams))}")
    check_hparams(hparams, spec.defaults, spec.checks)


def _parameter_names(groups: list[dict[str, Any]]) -> set[str]:
    """The names of the (name, tensor) entries of `groups`."""
    return {entry[0] for group in groups for entry in group["params"] if isinstance(entry, tuple)}


def build_optimizer(name: str, params: ParamsLike, *, exclude: Collection[str] | None = None,
                    **hparams: Any) -> Optimizer:
    """Build optimizer `name` (see OPTIMIZERS) over `params` (tensors, (name, tensor) pairs or groups).

    `exclude`: the names of the (name, tensor) pairs to give no weight decay and no trust ratio (every name
    must be one of them); None: tensors with at most one dimension. `exclude_1d=False` excludes nothing.
    """
    spec = spec_of(name)
    validate_hparams(name, hparams)
    if "betas" in hparams:
        hparams["betas"] = tuple(hparams["betas"])
    if spec.layerwise and exclude is None:
        return spec.cls(params, **hparams)
    groups = as_groups(params)
    if exclude is not None:
        unknown = sorted(set(exclude) - _parameter_names(groups))
        if unknown:  # e.g. names taken from a wrapped model ("module." prefixes): nothing would be excluded
            raise ValueError(f"exclude: not among the parameters' names: {', '.join(unknown[:3])}")
    # layer-wise: exclude_1d stays a constructor argument; the groups split here carry `adapt`, so it keeps them
    default = spec.defaults["exclude_1d"]
    exclude_1d = hparams.get("exclude_1d", default) if spec.layerwise else hparams.pop("exclude_1d", default)
    groups = split_1d_groups(groups, exclude_1d, trust_ratio=spec.layerwise, exclude=exclude)
    if not spec.layerwise:  # bare tensors: torch.optim would otherwise store the names in its state dict
        groups, _ = normalize_params(groups)
    return spec.cls(groups, **hparams)
