"""CLARS per-sample gradient norms: exact vmap result equals a loop of single-sample backward passes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import batch, small_convnet
from optim import build_optimizer, microbatch_grad_norms, per_sample_grad_norms

loss_fn = nn.functional.cross_entropy


def loop_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    sums = [torch.zeros((), dtype=torch.float64) for _ in model.parameters()]
    for i in range(x.shape[0]):
        model.zero_grad()
        loss_fn(model(x[i:i + 1]), y[i:i + 1]).backward()
        for k, p in enumerate(model.parameters()):
            sums[k] += p.grad.norm()
    return [s / x.shape[0] for s in sums]


@pytest.mark.parametrize("batchnorm", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 5, 64])
def test_per_sample_norms_equal_single_sample_loop(batchnorm, chunk_size):
    model = small_convnet(batchnorm=batchnorm)
    x, y = batch(12)
    running_before = [b.clone() for b in model.buffers()]
    exact = per_sample_grad_norms(model, loss_fn, x, y, chunk_size=chunk_size)
    assert all(torch.equal(a, b) for a, b in zip(running_before, model.buffers()))  # BN stats untouched
    reference = loop_norms(model, x, y)
    assert len(exact) == len(reference) == len(list(model.parameters()))
    for a, b in zip(exact, reference):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # and it is not the norm of the mean gradient (the LARS denominator)
    model.zero_grad()
    loss_fn(model(x), y).backward()
    assert exact[0] > next(model.parameters()).grad.norm() * 1.05


def test_microbatch_approximation_is_exact_at_size_one_and_smaller_above():
    model = small_convnet(batchnorm=False)
    x, y = batch(8)
    exact = per_sample_grad_norms(model, loss_fn, x, y)
    for a, b in zip(microbatch_grad_norms(model, loss_fn, x, y, num_microbatches=8), exact):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    coarse = microbatch_grad_norms(model, loss_fn, x, y, num_microbatches=2)
    assert all(c <= e + 1e-12 for c, e in zip(coarse, exact))
    with pytest.raises(ValueError, match="num_microbatches"):
        microbatch_grad_norms(model, loss_fn, x, y, num_microbatches=0)


def test_clars_training_step_with_exact_norms():
    model = small_convnet()
    opt = build_optimizer("clars", model.parameters(), lr=0.5, weight_decay=1e-3, eta=0.02)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = batch(10)
    loss_fn(model(x), y).backward()
    opt.set_per_sample_grad_norms(model.parameters(), per_sample_grad_norms(model, loss_fn, x, y))
    opt.step()
    # every parameter with a gradient moved (the conv bias before BatchNorm has a zero gradient up to
    # float64 rounding, ~1e-17: its step is below the resolution of its value)
    moved = [not torch.equal(a, p) for a, p in zip(before, model.parameters()) if p.grad.norm() > 1e-12]
    assert len(moved) == len(before) - 1 and all(moved)
    with pytest.raises(RuntimeError, match="per-sample"):  # the norms were consumed by that step
        opt.step()
