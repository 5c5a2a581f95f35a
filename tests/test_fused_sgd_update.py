"""The LARS family's eager step on the CPU in float32: norms from dot products (`tiled_norms`) and torch's fused SGD
kernel (`fused_sgd_update`), d never written — the same numbers as the multi-tensor ops to float32's rounding, the
gradients left as they were, channels_last weights (what every trial trains) included."""

from __future__ import annotations

import copy

import pytest
import torch

import optim.lars
from conftest import max_rel_err, small_convnet, train
from optim import build_optimizer
from optim.lars import SMALLEST_DAMPENED_RHO, fits_fused_sgd, fused_sgd_update, lars_update
from optim.layerwise import decayed_gradients, flat_views
from test_telemetry_and_state import CONFIGS, make

FAMILY = ("lars", "larc", "tvlars")
WD = 5e-3


def tensors(seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = ((64, 3, 3, 3), (16, 8, 3, 3), (10, 32), (300,), (1,))
    out = [torch.randn(shape, generator=gen) for shape in shapes]
    out[1] = out[1].to(memory_format=torch.channels_last)  # laid out as a trial's convolutions are
    return out


@pytest.mark.parametrize("momentum", [0.9, 0.0])
@pytest.mark.parametrize("with_rho", [True, False])
def test_fused_sgd_update_matches_the_multi_tensor_ops(with_rho, momentum):
    """Weights and momentum buffers after the kernel's update and after `lars_update`'s ops on d = g + wd·w, within
    a few float32 roundings; ρ spanning 1e-12 (below `SMALLEST_DAMPENED_RHO`: the ops) … 1e2, zero included; the
    gradients untouched."""
    params, bufs, grads = tensors(0), tensors(1), tensors(2)
    rho = torch.tensor([1e-3, 0.7, 1e2, 0.0, 1e-12]) if with_rho else None
    assert 1e-12 < SMALLEST_DAMPENED_RHO < 1e-3
    ours_p, ours_b = copy.deepcopy(params), copy.deepcopy(bufs) if momentum else None
    assert fits_fused_sgd(ours_p, 0.3)
    flat_p, flat_g, *flat_b = flat_views(ours_p, grads, *([ours_b] if momentum else []))
    fused_sgd_update(flat_p, flat_g, flat_b[0] if momentum else None, rho, lr=0.3, momentum=momentum, weight_decay=WD)
    assert all(torch.equal(g, fresh) for g, fresh in zip(grads, tensors(2)))
    lars_update(params, bufs if momentum else None, rho, decayed=decayed_gradients(grads, params, WD), lr=0.3,
                momentum=momentum)
    for ours, theirs in zip(ours_p + (ours_b or []), params + (bufs if momentum else [])):
        torch.testing.assert_close(ours, theirs, rtol=4e-7, atol=1e-7)
    assert not torch.equal(ours_p[0], tensors(0)[0])


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("label", FAMILY)
def test_float32_steps_take_the_kernel_and_match_the_multi_tensor_ops(label, memory_format, monkeypatch):
    """Six float32 steps with the eager default (`fused=False`) run the kernel every step, for channels_last
    weights too, and end within 1e-6 of the same steps by the multi-tensor ops; the untrained model is 1e-3 away."""
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return fused_sgd_update(*args, **kwargs)

    kernel, ops = (small_convnet(torch.float32).to(memory_format=memory_format) for _ in range(2))
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
    """The kernel reads p.grad and applies the weight decay itself: p.grad is what backward left, with and without
    weight decay."""
    model = small_convnet(torch.float32)
    opt = build_optimizer("lars", model.parameters(), fused=False, **(CONFIGS["lars"] | {"weight_decay": weight_decay}))
    x = torch.randn(16, 3, 8, 8)
    torch.nn.functional.cross_entropy(model(x), torch.arange(16) % 10).backward()
    before = [p.grad.clone() for p in model.parameters()]
    weights = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), before))
    assert not any(torch.equal(p, w) for p, w in zip(model.parameters(), weights))
