"""LAMB's eager step over a layer larger than a chunk, tile by tile (`optim.lamb.tiled_lamb_direction`): the same
numbers as the untiled step and as timm's Lamb, its telemetry too, contiguous and channels_last."""

from __future__ import annotations

import pytest
import timm.optim
import torch
from torch import nn

import optim.lamb
from conftest import max_rel_err, train
from optim import build_optimizer
from optim.layerwise import chunk_budget

STEPS = 6
HP = dict(lr=0.01, weight_decay=1e-2, eps=1e-6, fused=False)
VARIANTS = {"lamb": ("lamb", {}), "lambc": ("lambc", dict(clip_upper=1.0)),
            "lamb_adaptive_clip": ("lamb", dict(clip_mode="adaptive"))}
FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def wide_convnet(memory_format: torch.memory_format = torch.contiguous_format) -> nn.Module:
    """float64, with a convolution and a linear layer each larger than a CPU chunk (and one smaller layer)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 256, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(4096, 64), nn.ReLU(), nn.Linear(64, 10))
    return model.to(torch.float64).to(memory_format=memory_format)


@pytest.fixture
def tiled_calls(monkeypatch) -> list[bool]:
    """`want_g` of every tiled direction taken (the layers that went tile by tile)."""
    calls, tiled = [], optim.lamb.tiled_lamb_direction

    def counted(*args, **kwargs):
        calls.append(kwargs["want_g"])
        return tiled(*args, **kwargs)
    monkeypatch.setattr(optim.lamb, "tiled_lamb_direction", counted)
    return calls


def test_the_wide_layers_exceed_a_chunk():
    budget = chunk_budget(torch.device("cpu"), torch.finfo(torch.float64).bits // 8)
    assert sorted(p.numel() > budget for p in wide_convnet().parameters() if p.dim() > 1) == [False, False, True, True]


@pytest.mark.parametrize("layout", list(FORMATS))
@pytest.mark.parametrize("label", list(VARIANTS))
def test_tiles_match_the_untiled_step_with_telemetry(label, layout, tiled_calls, monkeypatch):
    name, extra = VARIANTS[label]
    tiled, whole = wide_convnet(FORMATS[layout]), wide_convnet(FORMATS[layout])
    opt_tiled = build_optimizer(name, tiled.parameters(), **HP, **extra)
    rows_tiled = opt_tiled.enable_telemetry(every=1)
    train(tiled, opt_tiled, STEPS)
    assert tiled_calls == [True] * 2 * STEPS  # two layers a step, each with ‖g‖ for telemetry

    monkeypatch.setenv("OPTIM_FOREACH_CHUNK", "0")  # no chunks: every layer in one untiled step
    opt_whole = build_optimizer(name, whole.parameters(), **HP, **extra)
    rows_whole = opt_whole.enable_telemetry(every=1)
    train(whole, opt_whole, STEPS)
    assert len(tiled_calls) == 2 * STEPS

    assert max_rel_err(tiled, whole) <= 1e-12
    assert torch.allclose(rows_tiled.collect().values, rows_whole.collect().values, rtol=1e-6, atol=0)
    assert max_rel_err(tiled, wide_convnet()) > 1e-3  # the run moved the weights


@pytest.mark.parametrize("clip", [False, True])
def test_tiles_match_timm_without_telemetry(clip, tiled_calls):
    ours, reference = wide_convnet(), wide_convnet()
    extra = dict(clip_upper=1.0) if clip else {}
    train(ours, build_optimizer("lambc" if clip else "lamb", ours.parameters(), exclude_1d=False, **HP, **extra),
          STEPS)
    train(reference, timm.optim.Lamb(reference.parameters(), lr=0.01, weight_decay=1e-2, eps=1e-6,
                                     max_grad_norm=None, always_adapt=True, trust_clip=clip), STEPS)
    assert tiled_calls == [False] * 2 * STEPS
    assert max_rel_err(ours, reference) <= 1e-6
    assert max_rel_err(ours, wide_convnet()) > 1e-3
