"""The factory's hyperparameter names come from the constructors, and one table of checks serves both."""

from __future__ import annotations

import inspect
import re

import pytest
import torch

from optim.checks import CHECKS
from optim.factory import NOT_EXPOSED, SPECS, build_optimizer, optimizer_hparams, spec_of


def params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2))]


@pytest.mark.parametrize("name", list(SPECS))
def test_hparams_are_the_constructor_keywords(name):
    """The names (and defaults) the factory derives are exactly what the constructor stores as its defaults."""
    spec = spec_of(name)
    opt = spec.cls(params())
    if spec.layerwise:
        stored = {k: v for k, v in opt.defaults.items() if k not in ("adapt", "step")} | {"exclude_1d": opt.exclude_1d}
    else:
        stored = {k: v for k, v in opt.defaults.items() if k not in NOT_EXPOSED} | {"exclude_1d": True}
    assert optimizer_hparams(name) == set(stored)
    assert spec.defaults == stored


@pytest.mark.parametrize("name", list(SPECS))
def test_every_hparam_is_a_keyword_of_the_constructor(name):
    spec = spec_of(name)
    keywords = set()
    for cls in spec.cls.__mro__:
        if "__init__" in vars(cls):
            keywords |= set(inspect.signature(cls.__init__).parameters)
    assert optimizer_hparams(name) - {"exclude_1d"} <= keywords
    if not spec.layerwise:  # torch.optim's own names, less the ones deliberately not exposed
        own = set(inspect.signature(spec.cls.__init__).parameters) - {"self", "params"}
        assert optimizer_hparams(name) == own - NOT_EXPOSED | {"exclude_1d"}


def test_not_exposed_names_are_torch_arguments():
    baseline_keywords = set().union(*(inspect.signature(s.cls.__init__).parameters for s in SPECS.values()
                                      if not s.layerwise))
    assert NOT_EXPOSED <= baseline_keywords


@pytest.mark.parametrize("name", list(SPECS))
def test_every_hparam_has_a_check(name):
    assert optimizer_hparams(name) <= set(CHECKS) | set(spec_of(name).checks)


@pytest.mark.parametrize("name, hp", [
    ("lars", dict(lr=-1)), ("lars", dict(lr=0.0)), ("lars", dict(lr="0.1")), ("lars", dict(lr=float("nan"))),
    ("lars", dict(momentum=1.0)), ("lars", dict(momentum="x")), ("lars", dict(eta=0.0)),
    ("lars", dict(weight_decay=-1e-4)), ("lars", dict(trust_denominator="bogus")), ("larc", dict(exclude_1d="yes")),
    ("clars", dict(clip_mode="sometimes")), ("lars", dict(clip_mode="adaptive", clip_k=0.0)),
    ("lars", dict(clip_beta=1.0)), ("lars", dict(clip_lower=-0.5)), ("lars", dict(clip_lower=2.0, clip_upper=1.0)),
    ("tvlars", dict(lam=-1)), ("tvlars", dict(alpha=0.0)), ("tvlars", dict(delay_steps=-1)),
    ("tvlars", dict(gamma_min=-0.1)), ("lamb", dict(betas=(1.0, 0.999))), ("lamb", dict(betas=(0.9,))),
    ("lamb", dict(betas=0.9)), ("lamb", dict(betas=("a", 0.5))), ("lamb", dict(eps=-1e-8)),
    ("lamb", dict(bias_correction=1)), ("lambc", dict(clip_lower=2.0)),
])
def test_class_and_factory_raise_the_same_text(name, hp):
    with pytest.raises(ValueError) as from_factory:
        build_optimizer(name, params(), **{"lr": 0.1, **hp})
    with pytest.raises(ValueError) as from_class:
        spec_of(name).cls(params(), **{"lr": 0.1, **hp})
    assert str(from_factory.value) == str(from_class.value)
    assert str(from_factory.value).split(":")[0] in hp


@pytest.mark.parametrize("name, alpha, message", [
    ("rmsprop", 1.5, "alpha: must be in [0, 1), got 1.5"),
    ("rmsprop", 0.0, None),
    ("tvlars", 1.5, None),
    ("tvlars", 0.0, "alpha: must be > 0, got 0.0"),
])
def test_alpha_means_different_things(name, alpha, message):
    if message is None:
        build_optimizer(name, params(), lr=0.1, alpha=alpha)
    else:
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            build_optimizer(name, params(), lr=0.1, alpha=alpha)


def test_lambc_default_upper_bound_is_checked_before_building():
    with pytest.raises(ValueError, match=r"^clip_lower: must be <= clip_upper, got clip_lower=2.0 > clip_upper=1.0$"):
        build_optimizer("lambc", params(), lr=0.1, clip_lower=2.0)
