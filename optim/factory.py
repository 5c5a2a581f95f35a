"""`build_optimizer(name, params, **hparams)`: the one way the platform makes an optimizer.

Every hyperparameter is checked before the optimizer exists: an unknown name or a bad value raises
ValueError naming the field. Baselines are torch.optim's own classes; `exclude_1d` gives their 1-D
tensors (biases, norm layers) no weight decay, as it does for the layer-wise optimizers.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim import Optimizer

from optim.clars import CLARS
from optim.lamb import LAMB
from optim.lambc import LAMBC
from optim.larc import LARC
from optim.lars import LARS
from optim.layerwise import ParamsLike, check_clip, check_positive, normalize_params, split_1d_groups
from optim.tvlars import TVLARS

_CLIP = {"clip_lower", "clip_upper", "clip_mode", "clip_k", "clip_beta"}
_LARS = {"lr", "momentum", "weight_decay", "eta", "trust_denominator", "exclude_1d"} | _CLIP
_LAMB = {"lr", "betas", "eps", "weight_decay", "bias_correction", "exclude_1d"} | _CLIP

LAYERWISE: dict[str, tuple[type[Optimizer], set[str]]] = {
    "lars": (LARS, _LARS),
    "larc": (LARC, _LARS),
    "tvlars": (TVLARS, _LARS | {"lam", "alpha", "delay_steps", "gamma_min"}),
    "clars": (CLARS, _LARS),
    "lamb": (LAMB, _LAMB),
    "lambc": (LAMBC, _LAMB),
}
BASELINES: dict[str, tuple[type[Optimizer], set[str]]] = {
    "sgd": (torch.optim.SGD, {"lr", "momentum", "weight_decay", "nesterov", "dampening"}),
    "adam": (torch.optim.Adam, {"lr", "betas", "eps", "weight_decay", "amsgrad"}),
    "adamw": (torch.optim.AdamW, {"lr", "betas", "eps", "weight_decay", "amsgrad"}),
    "adagrad": (torch.optim.Adagrad, {"lr", "eps", "weight_decay", "lr_decay"}),
    "rmsprop": (torch.optim.RMSprop, {"lr", "alpha", "eps", "momentum", "weight_decay", "centered"}),
}
OPTIMIZERS = {**LAYERWISE, **BASELINES}

_BOOLS = {"exclude_1d", "bias_correction", "nesterov", "amsgrad", "centered", "foreach"}
_NONNEGATIVE = {"weight_decay", "eps", "lam", "delay_steps", "gamma_min", "lr_decay", "dampening"}
_POSITIVE = {"lr", "eta", "alpha"}


def optimizer_hparams(name: str) -> set[str]:
    """The hyperparameter names `build_optimizer(name, ...)` accepts."""
    return set(_lookup(name)[1]) | ({"foreach"} if name in BASELINES else set()) | {"exclude_1d"}


def _lookup(name: str) -> tuple[type[Optimizer], set[str]]:
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer: unknown {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name]


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
        check_clip(hparams.get("clip_lower"), hparams.get("clip_upper"),
                   hparams.get("clip_mode", "fixed"), hparams.get("clip_k", 3.0), hparams.get("clip_beta", 0.99))


def build_optimizer(name: str, params: ParamsLike, **hparams: Any) -> Optimizer:
    """Build optimizer `name` (see OPTIMIZERS) over `params` (tensors, (name, tensor) pairs or groups)."""
    cls, _ = _lookup(name)
    validate_hparams(name, hparams)
    if "betas" in hparams:
        hparams["betas"] = tuple(hparams["betas"])
    if name in LAYERWISE:
        return cls(params, **hparams)
    groups, _ = normalize_params(params)
    groups = split_1d_groups(groups, hparams.pop("exclude_1d", True), trust_ratio=False)
    return cls(groups, **hparams)
