"""The trust-ratio optimizers on a GPU: the CPU's numbers, eager and fused, and no host sync inside a step.

Skipped without CUDA (CI never has a GPU); `.ci/gpu` runs them on a lent GPU machine."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import batch, max_rel_err, small_convnet
from optim import build_optimizer, per_sample_grad_norms
from test_telemetry_and_state import CONFIGS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")

LAYERWISE = [k for k in CONFIGS if k not in ("sgd", "adam")]
STEPS = 6


def trained(label: str, device: str, fused: bool, steps: int = STEPS, sync_check_from: int | None = None):
    """A float64 conv net after `steps` steps of `label` on `device`; from step `sync_check_from` on, every
    `opt.step()` runs with CUDA's sync debug mode set to raise, telemetry on."""
    model = small_convnet().to(device)
    opt = build_optimizer(label.split("_")[0], list(model.named_parameters()), fused=fused, **CONFIGS[label])
    recorder = opt.enable_telemetry() if sync_check_from is not None else None
    for i in range(steps):
        x, y = (t.to(device) for t in batch(seed=i))
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        if label == "clars":
            opt.set_per_sample_grad_norms(model.parameters(),
                                          per_sample_grad_norms(model, nn.functional.cross_entropy, x, y))
        checking = sync_check_from is not None and i >= sync_check_from
        if checking:
            torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step()
        finally:
            if checking:
                torch.cuda.set_sync_debug_mode(0)
    if recorder is not None:
        assert len(recorder.collect().steps) == steps
    return model


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
@pytest.mark.parametrize("label", LAYERWISE)
def test_cuda_step_matches_the_cpu(label, fused):
    """float64, 6 steps: parameters on the GPU (eager, or compiled to Triton) equal the CPU's eager ones."""
    cpu, gpu = trained(label, "cpu", fused=False), trained(label, "cuda", fused=fused)
    assert max_rel_err(gpu.cpu(), cpu) <= 1e-9


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
@pytest.mark.parametrize("label", LAYERWISE)
def test_cuda_step_never_waits_for_the_gpu(label, fused):
    """No step (φ(t), clipping, the adaptive clip's statistics, telemetry, the fused passes' per-step values)
    copies to or from the host or synchronises: sync debug mode raises on any, from the step after compiling."""
    trained(label, "cuda", fused=fused, steps=4, sync_check_from=1)
