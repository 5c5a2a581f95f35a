"""The LARS family's eager momentum update on the CPU in float32: torch's fused SGD kernel (`fused_sgd_update`) in
place of three multi-tensor ops — the same numbers to float32's rounding, the gradients left as they were."""

from __future__ import annotations

import copy

import pytest
import torch

import optim.lars
from conftest import max_rel_err, small_convnet, train
from optim import build_optimizer
from optim.lars import fused_sgd_update, lars_update
from test_telemetry_and_state import CONFIGS, make

FAMILY = ("lars", "larc", "tvlars")


def tensors(seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) for shape in ((64, 3, 3, 3), (10, 32), (300,), (1,))]


@pytest.mark.parametrize("with_rho", [True, False])
def test_fused_sgd_update_matches_the_multi_tensor_ops(with_rho):
    """Weights and momentum buffers after the kernel's update and after `lars_update`'s three ops, within a few
    float32 roundings of each other; ρ spanning 1e-3 … 1e2, zero included."""
    params, bufs, grads = tensors(0), tensors(1), tensors(2)
    rho = torch.tensor([1e-3, 0.7, 1e2, 0.0]) if with_rho else None
    ours_p, ours_b, ours_d = copy.deepcopy(params), copy.deepcopy(bufs), copy.deepcopy(grads)
    fused_sgd_update(ours_p, ours_b, rho, decayed=ours_d, lr=0.3, momentum=0.9)
    lars_update(params, bufs, rho, decayed=grads, lr=0.3, momentum=0.9)
    for ours, theirs in zip(ours_p + ours_b, params + bufs):
        torch.testing.assert_close(ours, theirs, rtol=4e-7, atol=1e-7)
    assert not torch.equal(ours_p[0], tensors(0)[0])


@pytest.mark.parametrize("label", FAMILY)
def test_float32_steps_take_the_kernel_and_match_the_multi_tensor_ops(label, monkeypatch):
    """Six float32 steps with the eager default (`fused=False`) run the kernel every step and end within 1e-6 of
    the same steps by the multi-tensor ops; the untrained model is 1e-3 away."""
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return fused_sgd_update(*args, **kwargs)

    kernel, ops = small_convnet(torch.float32), small_convnet(torch.float32)
    monkeypatch.setattr(optim.lars, "fused_sgd_update", counted)
    train(kernel, make(label, kernel, fused=False), 6, dtype=torch.float32)
    kernel_steps = len(calls)
    monkeypatch.setattr(optim.lars, "fits_fused_sgd", lambda params, lr: False)
    train(ops, make(label, ops, fused=False), 6, dtype=torch.float32)
    assert kernel_steps >= 6 and len(calls) == kernel_steps  # the kernel every step, then never
    assert max_rel_err(kernel, ops) <= 1e-6
    assert max_rel_err(ops, small_convnet(torch.float32)) > 1e-3


@pytest.mark.parametrize("weight_decay", [1e-3, 0.0])
def test_a_step_leaves_the_gradients_as_they_were(weight_decay):
    """The kernel writes ρ·d back into d: only the optimizer's scratch d, never p.grad (with weight decay, d is
    the scratch; without it, d would be p.grad, and the multi-tensor ops run instead)."""
    model = small_convnet(torch.float32)
    opt = build_optimizer("lars", model.parameters(), fused=False, **(CONFIGS["lars"] | {"weight_decay": weight_decay}))
    x = torch.randn(16, 3, 8, 8)
    torch.nn.functional.cross_entropy(model(x), torch.arange(16) % 10).backward()
    before = [p.grad.clone() for p in model.parameters()]
    weights = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), before))
    assert not any(torch.equal(p, w) for p, w in zip(model.parameters(), weights))
