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


def contiguous_grads(model: nn.Module):
    """A `before_step` that gives every gradient contiguous strides, whatever its parameter's layout."""
    def relayout(_: int) -> None:
        for p in model.parameters():
            p.grad = p.grad.contiguous()
    return relayout


@pytest.mark.parametrize("label", ["lamb", "lamb_excluded"])
def test_gradients_and_moments_in_another_layout_step_as_in_the_parameters(label):
    """The fused Adam kernel walks every tensor in its parameter's memory order: a gradient or a moment with other
    strides (set by hand, or from a checkpoint of a model in another memory format) is taken in the parameter's."""
    extra = dict(exclude=[name for name, _ in wide_convnet().named_parameters()]) if label == "lamb_excluded" else {}
    steps = {}
    for case in ("matching", "other_layout"):
        model = wide_convnet(torch.channels_last)
        opt = build_optimizer("lamb", model.named_parameters(), **HP, **extra)
        train(model, opt, 2, contiguous_grads(model) if case == "other_layout" else None)
        if case == "other_layout":  # moments saved contiguous, as a contiguous model's checkpoint holds them
            for state in opt.state.values():
                state["exp_avg"], state["exp_avg_sq"] = state["exp_avg"].contiguous(), state["exp_avg_sq"].contiguous()
        assert any(not p.is_contiguous() for p in model.parameters())
        train(model, opt, 2, contiguous_grads(model) if case == "other_layout" else None)
        steps[case] = model
    assert max_rel_err(steps["other_layout"], steps["matching"]) <= 1e-12


def test_a_parameter_with_gaps_is_one_clear_error():
    weight = nn.Parameter(torch.randn(8, 16)[:, ::2])
    with pytest.raises(ValueError, match=r"params: w has gaps in memory .*contiguous"):
        build_optimizer("lamb", [("w", weight)], lr=0.01)
