"""One check per hyperparameter name (`CHECKS`), the only place a value's validity is written.

`build_optimizer` runs them before anything is built and the layer-wise constructors run them on their
arguments, so both raise the same ValueError, its text starting with the field's name.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping
from typing import Any

Check = Callable[[str, Any], None]

CLIP_MODES = ("fixed", "adaptive")  # trust-ratio clipping: fixed bounds or per-layer EMA bounds (optim.layerwise)
DENOMINATORS = ("lars", "paper")  # LARS' trust-ratio denominator: ‖d‖, or the paper's ‖g‖ + wd‖w‖ (optim.lars)


def number(field: str, value: Any) -> float:
    """`value` if it is a real number (not a bool, not NaN); else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{field}: expected a number, got {value!r}")
    return value


def count_arg(text: str) -> int:
    """An argparse `type` for a command line's counts (`--rounds`, `--steps`, …): a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive(field: str, value: Any) -> None:
    """A number > 0."""
    if number(field, value) <= 0:
        raise ValueError(f"{field}: must be > 0, got {value}")


def nonnegative(field: str, value: Any) -> None:
    """A number >= 0."""
    if number(field, value) < 0:
        raise ValueError(f"{field}: must be >= 0, got {value}")


def optional_nonnegative(field: str, value: Any) -> None:
    """None (unset) or a number >= 0."""
    if value is not None:
        nonnegative(field, value)


def unit_interval(field: str, value: Any) -> None:
    """A number in [0, 1) (a momentum or EMA decay)."""
    if not 0 <= number(field, value) < 1:
        raise ValueError(f"{field}: must be in [0, 1), got {value}")


def beta_pair(field: str, value: Any) -> None:
    """Two numbers in [0, 1) (Adam's moment decays), as a tuple or list."""
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(0 <= number(field, b) < 1 for b in value)):
        raise ValueError(f"{field}: must be two numbers in [0, 1), got {value!r}")


def flag(field: str, value: Any) -> None:
    """True or False (not a truthy value)."""
    if not isinstance(value, bool):
        raise ValueError(f"{field}: expected true/false, got {value!r}")


def optional_flag(field: str, value: Any) -> None:
    """None (the default's choice) or True/False."""
    if value is not None:
        flag(field, value)


def one_of(choices: tuple[str, ...]) -> Check:
    """A check that the value is one of `choices`."""
    def check(field: str, value: Any) -> None:
        if value not in choices:
            raise ValueError(f"{field}: must be one of {choices}, got {value!r}")
    return check


CHECKS: dict[str, Check] = {
    "lr": positive, "eta": positive, "alpha": positive, "clip_k": positive,
    "weight_decay": nonnegative, "eps": nonnegative, "lam": nonnegative, "delay_steps": nonnegative,
    "gamma_min": nonnegative, "lr_decay": nonnegative, "dampening": nonnegative,
    "clip_lower": optional_nonnegative, "clip_upper": optional_nonnegative,
    "momentum": unit_interval, "clip_beta": unit_interval, "betas": beta_pair,
    "exclude_1d": flag, "bias_correction": flag, "nesterov": flag, "amsgrad": flag, "centered": flag, "foreach": flag,
    "fused": optional_flag,
    "trust_denominator": one_of(DENOMINATORS), "clip_mode": one_of(CLIP_MODES),
}


def check_clip_bounds(values: Mapping[str, Any]) -> None:
    """The one check across fields: clip_lower <= clip_upper when both bounds are set."""
    lower, upper = values.get("clip_lower"), values.get("clip_upper")
    if lower is not None and upper is not None and lower > upper:
        raise ValueError(f"clip_lower: must be <= clip_upper, got clip_lower={lower} > clip_upper={upper}")


def check_hparams(values: Mapping[str, Any], defaults: Mapping[str, Any] | None = None,
                  overrides: Mapping[str, Check] | None = None) -> None:
    """Check each field of `values` in order (`overrides` replacing CHECKS' entries), then the bounds over `defaults`.

    Which names an optimizer takes is its constructor's business (see `optim.factory`); every one has a check here.
    """
    checks = {**CHECKS, **(overrides or {})}
    for field, value in values.items():
        if field in checks:
            checks[field](field, value)
    check_clip_bounds({**(defaults or {}), **values})
