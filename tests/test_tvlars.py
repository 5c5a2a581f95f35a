"""TVLARS: φ(t) bounds (the paper's Eq. 5), λ = 0 reduces to scaled LARS, overflow safety."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import max_rel_err, small_convnet, train
from optim import build_optimizer, delay_steps_from_epochs, tvlars_phi


@pytest.mark.parametrize("alpha, gamma_min", [(1.0, 0.0), (1.0, 0.1), (2.0, 0.05)])
def test_lambda_zero_equals_lars_with_scaled_ratio(alpha, gamma_min):
    """φ ≡ 1/(α+1) + γ_min when λ = 0, which a LARS run with η scaled by that constant reproduces."""
    scale = 1 / (alpha + 1) + gamma_min
    hp = dict(lr=0.5, momentum=0.9, weight_decay=1e-2, eta=1e-2)
    tv, ref = small_convnet(), small_convnet()
    train(tv, build_optimizer("tvlars", tv.parameters(), lam=0.0, alpha=alpha, gamma_min=gamma_min,
                              delay_steps=5, **hp), 10)
    train(ref, build_optimizer("lars", ref.parameters(), **{**hp, "eta": hp["eta"] * scale}), 10)
    assert max_rel_err(tv, ref) <= 1e-12


@pytest.mark.parametrize("lam, d_e, alpha, gamma_min", [(1e-3, 500, 1.0, 0.0), (0.05, 100, 1.0, 0.01),
                                                        (1e-2, 0, 2.0, 0.1)])
def test_phi_bounds_and_monotone(lam, d_e, alpha, gamma_min):
    values = [tvlars_phi(t, lam, d_e, alpha, gamma_min) for t in range(0, 5000, 7)]
    assert values[0] == pytest.approx(1 / (alpha + math.exp(-lam * d_e)) + gamma_min, rel=1e-14)
    assert all(gamma_min <= v <= 1 / alpha + gamma_min for v in values)  # Eq. 5
    assert all(a >= b for a, b in zip(values, values[1:]))  # non-increasing for λ ≥ 0
    assert values[-1] - gamma_min < 1e-3 or lam * (4995 - d_e) < 10  # settles at γ_min


def test_phi_is_finite_for_huge_exponent():
    assert tvlars_phi(10**9, 10.0, 0, 1.0, 0.25) == 0.25
    assert tvlars_phi(0, 10.0, 10**9, 1.0, 0.0) == 1.0
    assert math.isfinite(tvlars_phi(10**6, 1e6, 0, 1e-300, 0.0))


def test_training_with_huge_lambda_stays_finite():
    model = small_convnet()
    opt = build_optimizer("tvlars", model.parameters(), lr=1.0, lam=1e4, delay_steps=0, gamma_min=1e-3)
    train(model, opt, 4)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert opt.phi() == pytest.approx(1e-3)


def test_delay_steps_from_epochs():
    assert delay_steps_from_epochs(2.5, 98) == 245
    with pytest.raises(ValueError, match="steps_per_epoch"):
        delay_steps_from_epochs(1, 0)
