"""The trust-ratio optimizers on a GPU: the CPU's numbers, eager and fused, and no host sync inside a step.

Skipped without CUDA (CI never has a GPU); `.ci/gpu` runs them on a lent GPU machine."""

from __future__ import annotations

import itertools

import pytest
import torch

from conftest import max_rel_err, small_convnet, train
from test_telemetry_and_state import CONFIGS, clars_hook, make

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")

LAYERWISE = [k for k in CONFIGS if k not in ("sgd", "adam")]


def built(label: str, device: str, fused: bool):
    """A float64 conv net on `device` and its `label` optimizer, `fused` set."""
    model = small_convnet().to(device)
    return model, make(label, model, fused=fused)


def trained(label: str, device: str, fused: bool):
    """The conv net after 6 steps of `label` on `device`."""
    model, opt = built(label, device, fused)
    train(model, opt, 6, clars_hook(model, opt))
    return model


def raise_on_syncs(opt: torch.optim.Optimizer, from_step: int) -> None:
    """From its `from_step`-th call on, `opt.step()` runs with CUDA's sync debug mode set to raise."""
    step, calls = opt.step, itertools.count()

    def checked():
        if next(calls) < from_step:
            return step()
        torch.cuda.set_sync_debug_mode("error")
        try:
            return step()
        finally:
            torch.cuda.set_sync_debug_mode(0)

    opt.step = checked


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
    model, opt = built(label, "cuda", fused)
    recorder = opt.enable_telemetry(every=1)
    raise_on_syncs(opt, from_step=1)
    train(model, opt, 4, clars_hook(model, opt))
    assert len(recorder.collect().steps) == 4
