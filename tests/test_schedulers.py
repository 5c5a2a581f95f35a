"""Per-step learning rates of every schedule against their closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from optim import build_optimizer, build_scheduler

EPOCHS, STEPS_PER_EPOCH = 10, 10
TOTAL = EPOCHS * STEPS_PER_EPOCH


def lrs(name: str, **kwargs) -> list[float]:
    opt = build_optimizer("lars", [torch.nn.Parameter(torch.ones(2, 2))], lr=2.0)
    sched = build_scheduler(name, opt, epochs=EPOCHS, steps_per_epoch=STEPS_PER_EPOCH, **kwargs)
    out = []
    for _ in range(TOTAL):
        out.append(opt.param_groups[0]["lr"])
        opt.step()  # no gradients: only the step counter moves
        sched.step()
    return out


def test_warmup_cosine():
    got = lrs("warmup_cosine", warmup_epochs=2, min_lr_ratio=0.1)
    warm = 20
    expected = [2.0 * (i + 1) / warm for i in range(warm)]
    expected += [2.0 * (0.1 + 0.9 * (1 + math.cos(math.pi * (i - warm) / (TOTAL - warm))) / 2)
                 for i in range(warm, TOTAL)]
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_poly():
    assert lrs("poly", power=2.0) == pytest.approx([2.0 * (1 - i / TOTAL) ** 2 for i in range(TOTAL)], rel=1e-9)


def test_cosine():
    expected = [2.0 * (1 + math.cos(math.pi * i / TOTAL)) / 2 for i in range(TOTAL)]
    assert lrs("cosine") == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_none_is_constant_and_resumable():
    assert lrs("none") == [2.0] * TOTAL


def test_scheduler_state_round_trip():
    opt = build_optimizer("lars", [torch.nn.Parameter(torch.ones(2, 2))], lr=2.0)
    sched = build_scheduler("warmup_cosine", opt, epochs=EPOCHS, steps_per_epoch=STEPS_PER_EPOCH, warmup_epochs=2)
    for _ in range(37):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = build_optimizer("lars", [torch.nn.Parameter(torch.ones(2, 2))], lr=2.0)
    sched2 = build_scheduler("warmup_cosine", opt2, epochs=EPOCHS, steps_per_epoch=STEPS_PER_EPOCH, warmup_epochs=2)
    sched2.load_state_dict(state)
    opt2.load_state_dict(opt.state_dict())
    for _ in range(5):
        opt.step()
        opt2.step()
        sched.step()
        sched2.step()
        assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
