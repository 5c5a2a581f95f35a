"""Bad optimizer and scheduler input raises one ValueError naming the field, before any step."""

from __future__ import annotations

import pytest
import torch

from optim import OPTIMIZERS, SCHEDULERS, build_optimizer, build_scheduler, optimizer_hparams


def params():
    return [torch.nn.Parameter(torch.ones(2, 2))]


@pytest.mark.parametrize("name, hp, field", [
    ("lars", dict(lr=0.0), "lr"),
    ("lars", dict(lr=-1.0), "lr"),
    ("lars", dict(eta=0.0), "eta"),
    ("lars", dict(eta=-1e-3), "eta"),
    ("tvlars", dict(lam=-1e-4), "lam"),
    ("tvlars", dict(alpha=0.0), "alpha"),
    ("tvlars", dict(delay_steps=-1), "delay_steps"),
    ("tvlars", dict(gamma_min=-0.1), "gamma_min"),
    ("lambc", dict(clip_lower=2.0, clip_upper=1.0), "clip_lower"),
    ("lars", dict(clip_lower=-0.5), "clip_lower"),
    ("lamb", dict(betas=(1.0, 0.999)), "betas"),
    ("lamb", dict(betas=(0.9, -0.1)), "betas"),
    ("lamb", dict(betas=(0.9,)), "betas"),
    ("adam", dict(betas=(0.9, 1.5)), "betas"),
    ("lamb", dict(eps=-1e-8), "eps"),
    ("lars", dict(momentum=1.0), "momentum"),
    ("lars", dict(weight_decay=-1e-4), "weight_decay"),
    ("lars", dict(trust_denominator="bogus"), "trust_denominator"),
    ("lars", dict(clip_mode="sometimes"), "clip_mode"),
    ("lars", dict(clip_mode="adaptive", clip_k=0.0), "clip_k"),
    ("lars", dict(clip_beta=1.0), "clip_beta"),
    ("lars", dict(exclude_1d="yes"), "exclude_1d"),
    ("lars", dict(lr="0.1"), "lr"),
    ("lars", dict(lr=float("nan")), "lr"),
    ("sgd", dict(lr=0.0), "lr"),
    ("rmsprop", dict(alpha=1.5), "alpha"),
    ("lars", dict(lam=1e-3), "lam"),  # λ is not a LARS hyperparameter
    ("sgd", dict(eta=1e-3), "eta"),
])
def test_bad_hyperparameter_names_the_field(name, hp, field):
    with pytest.raises(ValueError, match=rf"^{field}\b"):
        build_optimizer(name, params(), **{"lr": 0.1, **hp})


def test_unknown_optimizer_lists_choices():
    with pytest.raises(ValueError, match="unknown 'lion'.*lars, larc, tvlars"):
        build_optimizer("lion", params(), lr=0.1)


def test_classes_validate_too():
    from optim import LARS, TVLARS
    with pytest.raises(ValueError, match="^lr"):
        LARS(params(), lr=0)
    with pytest.raises(ValueError, match="^lam"):
        TVLARS(params(), lam=-1)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_builds_and_steps(name):
    p = params()
    opt = build_optimizer(name, p, lr=0.01)
    p[0].grad = torch.full_like(p[0], 0.5)
    if name == "clars":
        opt.set_per_sample_grad_norms(p, [torch.tensor(1.0)])
    opt.step()
    assert not torch.equal(p[0].detach(), torch.ones(2, 2))
    assert "lr" in optimizer_hparams(name)


@pytest.mark.parametrize("kwargs, field", [
    (dict(name="linear"), "scheduler"),
    (dict(epochs=0), "epochs"),
    (dict(steps_per_epoch=0), "steps_per_epoch"),
    (dict(warmup_epochs=-1), "warmup_epochs"),
    (dict(warmup_epochs=10), "warmup_epochs"),
    (dict(min_lr_ratio=1.5), "min_lr_ratio"),
])
def test_bad_scheduler_input(kwargs, field):
    opt = torch.optim.SGD(params(), lr=1.0)
    args = dict(name="warmup_cosine", epochs=10, steps_per_epoch=5, warmup_epochs=2) | kwargs
    with pytest.raises(ValueError, match=rf"^{field}\b"):
        build_scheduler(args.pop("name"), opt, **args)
    assert set(SCHEDULERS) == {"warmup_cosine", "poly", "cosine", "none"}
