"""`build_optimizer(name, params, **hparams)`: the one way the platform makes an optimizer.

Every hyperparameter is checked before the optimizer exists: an unknown name or a bad value raises
ValueError naming the field. Baselines are torch.optim's own classes; `exclude_1d` gives their 1-D
tensors (biases, norm layers) no weight decay, as it does for the layer-wise optimizers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import Optimizer

from optim.clars import CLARS
from optim.lamb import LAMB
from optim.lambc import LAMBC
from optim.larc import LARC
from optim.lars import LARS
from optim.layerwise import CLIP_DEFAULTS, ParamsLike, check_clip, check_positive, normalize_params, split_1d_groups
from optim.tvlars import TVLARS, delay_steps_from_epochs

_CLIP = set(CLIP_DEFAULTS)
_LARS = {"lr", "momentum", "weight_decay", "eta", "trust_denominator", "exclude_1d"} | _CLIP
_LAMB = {"lr", "betas", "eps", "weight_decay", "bias_correction", "exclude_1d"} | _CLIP


@dataclass(frozen=True)
class OptimSpec:
    """What the platform knows about one optimizer: its class, a description, the hyperparameters it takes,
    and those a trial may give in epochs (name → the optimizer's own step-denominated name and converter)."""

    cls: type[Optimizer]
    description: str
    hparams: frozenset[str]
    layerwise: bool = True
    in_epochs: dict[str, tuple[str, Callable[[float, int], int]]] = dataclasses.field(default_factory=dict)

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
    "lars": OptimSpec(LARS, "LARS: layer-wise trust ratio η‖w‖/‖d‖ with momentum", frozenset(_LARS)),
    "larc": OptimSpec(LARC, "LARC: LARS with the local lr clipped at the global lr", frozenset(_LARS)),
    "tvlars": OptimSpec(TVLARS, "TVLARS: LARS with the trust ratio scaled by φ(t), no warm-up",
                        frozenset(_LARS | {"lam", "alpha", "delay_steps", "gamma_min"}),
                        in_epochs={"delay_epochs": ("delay_steps", delay_steps_from_epochs)}),
    "clars": OptimSpec(CLARS, "CLARS: per-sample gradient norms in the trust ratio", frozenset(_LARS)),
    "lamb": OptimSpec(LAMB, "LAMB: Adam's update scaled by a layer-wise trust ratio", frozenset(_LAMB)),
    "lambc": OptimSpec(LAMBC, "LAMBC: LAMB with the trust ratio clipped to [μ, τ]", frozenset(_LAMB)),
    "sgd": OptimSpec(torch.optim.SGD, "torch SGD (momentum)",
                     frozenset({"lr", "momentum", "weight_decay", "nesterov", "dampening"}), layerwise=False),
    "adam": OptimSpec(torch.optim.Adam, "torch Adam", frozenset({"lr", "betas", "eps", "weight_decay", "amsgrad"}),
                      layerwise=False),
    "adamw": OptimSpec(torch.optim.AdamW, "torch AdamW", frozenset({"lr", "betas", "eps", "weight_decay", "amsgrad"}),
                       layerwise=False),
    "adagrad": OptimSpec(torch.optim.Adagrad, "torch Adagrad", frozenset({"lr", "eps", "weight_decay", "lr_decay"}),
                         layerwise=False),
    "rmsprop": OptimSpec(torch.optim.RMSprop, "torch RMSprop",
                         frozenset({"lr", "alpha", "eps", "momentum", "weight_decay", "centered"}), layerwise=False),
}
LAYERWISE = {name: spec for name, spec in SPECS.items() if spec.layerwise}
BASELINES = {name: spec for name, spec in SPECS.items() if not spec.layerwise}
OPTIMIZERS = SPECS

_BOOLS = {"exclude_1d", "bias_correction", "nesterov", "amsgrad", "centered", "foreach"}
_NONNEGATIVE = {"weight_decay", "eps", "lam", "delay_steps", "gamma_min", "lr_decay", "dampening"}
_POSITIVE = {"lr", "eta", "alpha"}


def optimizer_hparams(name: str) -> set[str]:
    """The hyperparameter names `build_optimizer(name, ...)` accepts."""
    return set(spec_of(name).hparams) | ({"foreach"} if name in BASELINES else set()) | {"exclude_1d"}


def trial_hparams(name: str) -> set[str]:
    """The hyperparameter names a trial may set for optimizer `name`: `optimizer_hparams` and those in epochs."""
    return optimizer_hparams(name) | set(spec_of(name).in_epochs)


def spec_of(name: str) -> OptimSpec:
    if name not in SPECS:
        raise ValueError(f"optimizer: unknown {name!r}; choose one of {', '.join(SPECS)}")
    return SPECS[name]


def _check_number(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{field}: expected a number, got {value!r}")
    return value


def validate_hparams(name: str, hparams: dict[str, Any]) -> None:
    """Raise ValueError naming the first unknown or invalid field; no optimizer is built."""
    allowed = optimizer_hparams(name)
    unknown = sorted(set(hparams) - allowed)
    if unknown:
        raise ValueError(f"{unknown[0]}: not a hyperparameter of {name!r}; allowed: {', '.join(sorted(allowed))}")
    for field, value in hparams.items():
        if field in _BOOLS:
            if not isinstance(value, bool):
                raise ValueError(f"{field}: expected true/false, got {value!r}")
        elif field == "momentum" or (field == "alpha" and name == "rmsprop"):
            if not 0 <= _check_number(field, value) < 1:
                raise ValueError(f"{field}: must be in [0, 1), got {value}")
        elif field in _POSITIVE:
            check_positive(field, _check_number(field, value))
        elif field in _NONNEGATIVE:
            check_positive(field, _check_number(field, value), allow_zero=True)
        elif field == "betas":
            if (not isinstance(value, (tuple, list)) or len(value) != 2
                    or not all(0 <= _check_number(field, b) < 1 for b in value)):
                raise ValueError(f"betas: must be two numbers in [0, 1), got {value!r}")
    if name in LAYERWISE:
        check_clip(hparams)


def build_optimizer(name: str, params: ParamsLike, **hparams: Any) -> Optimizer:
    """Build optimizer `name` (see OPTIMIZERS) over `params` (tensors, (name, tensor) pairs or groups)."""
    cls = spec_of(name).cls
    validate_hparams(name, hparams)
    if "betas" in hparams:
        hparams["betas"] = tuple(hparams["betas"])
    if name in LAYERWISE:
        return cls(params, **hparams)
    groups, _ = normalize_params(params)
    groups = split_1d_groups(groups, hparams.pop("exclude_1d", True), trust_ratio=False)
    return cls(groups, **hparams)
