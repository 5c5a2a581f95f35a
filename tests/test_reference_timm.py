"""Against timm.optim (reference implementations) over 12 steps of a small conv net in float64."""

from __future__ import annotations

import copy

import pytest
import timm.optim

from conftest import max_rel_err, small_convnet, train
from optim import build_optimizer

STEPS = 12
LARS_HP = dict(lr=0.5, momentum=0.9, weight_decay=1e-2, eta=0.02, trust_denominator="paper", exclude_1d=False)
LAMB_HP = dict(lr=0.01, weight_decay=1e-2, eps=1e-6, exclude_1d=False)

CASES = {
    "lars": (dict(LARS_HP),
             lambda p: timm.optim.Lars(p, lr=0.5, momentum=0.9, weight_decay=1e-2, trust_coeff=0.02, eps=0.0,
                                       always_adapt=True)),
    "larc": (dict(LARS_HP),
             lambda p: timm.optim.Lars(p, lr=0.5, momentum=0.9, weight_decay=1e-2, trust_coeff=0.02, eps=0.0,
                                       trust_clip=True, always_adapt=True)),
    "lamb": (dict(LAMB_HP),
             lambda p: timm.optim.Lamb(p, lr=0.01, weight_decay=1e-2, eps=1e-6, max_grad_norm=None,
                                       always_adapt=True)),
    "lambc": (dict(LAMB_HP, clip_upper=1.0),
              lambda p: timm.optim.Lamb(p, lr=0.01, weight_decay=1e-2, eps=1e-6, max_grad_norm=None,
                                        always_adapt=True, trust_clip=True)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_timm(name):
    hp, make_reference = CASES[name]
    ours_model = small_convnet()
    ref_model = copy.deepcopy(ours_model)
    ours_losses = train(ours_model, build_optimizer(name, ours_model.parameters(), **hp), STEPS)
    ref_losses = train(ref_model, make_reference(ref_model.parameters()), STEPS)
    assert max_rel_err(ours_model, ref_model) <= 1e-6
    assert ours_losses[-1] == pytest.approx(ref_losses[-1], rel=1e-9)
    assert max_rel_err(ours_model, small_convnet()) > 1e-3  # the run moved the weights


@pytest.mark.parametrize("clipped, unclipped", [("larc", "lars"), ("lambc", "lamb")])
def test_clipping_binds_in_the_reference_setting(clipped, unclipped):
    """The clip cases above differ from their unclipped twins, so the comparisons test the clipping."""
    a, b = small_convnet(), small_convnet()
    train(a, build_optimizer(clipped, a.parameters(), **CASES[clipped][0]), STEPS)
    train(b, build_optimizer(unclipped, b.parameters(), **CASES[unclipped][0]), STEPS)
    assert max_rel_err(a, b) > 1e-3
