"""Telemetry changes nothing and hands data over in one batch; state_dict round-trips mid-run."""

from __future__ import annotations

import io

import pyarrow as pa
import pytest
import torch
from torch import nn

from conftest import batch, small_convnet, train
from optim import build_optimizer, per_sample_grad_norms

CONFIGS = {
    "lars": dict(lr=0.5, momentum=0.9, weight_decay=1e-3, eta=0.02),
    "larc": dict(lr=0.5, momentum=0.9, weight_decay=1e-3, eta=0.02),
    "tvlars": dict(lr=0.5, momentum=0.9, weight_decay=1e-3, eta=0.02, lam=0.3, delay_steps=3, gamma_min=0.01),
    "clars": dict(lr=0.5, momentum=0.9, weight_decay=1e-3, eta=0.02),
    "lamb": dict(lr=0.01, weight_decay=1e-2),
    "lambc": dict(lr=0.01, weight_decay=1e-2, clip_upper=1.0),
    "lars_adaptive": dict(lr=0.5, momentum=0.9, eta=0.02, clip_mode="adaptive", clip_k=1.0),
    "lamb_adaptive": dict(lr=0.01, clip_mode="adaptive", clip_k=1.0, clip_lower=0.0),
    "sgd": dict(lr=0.1, momentum=0.9, weight_decay=1e-3),
    "adam": dict(lr=0.01),
}


def make(label: str, model: nn.Module, **extra):
    name = label.split("_")[0]
    return build_optimizer(name, list(model.named_parameters()), **CONFIGS[label], **extra)


def clars_hook(model, opt):
    def before_step(i: int) -> None:
        if type(opt).__name__ == "CLARS":
            x, y = (t.to(next(model.parameters()).device) for t in batch(seed=i))
            opt.set_per_sample_grad_norms(model.parameters(),
                                          per_sample_grad_norms(model, nn.functional.cross_entropy, x, y))
    return before_step


@pytest.mark.parametrize("label", [k for k in CONFIGS if k not in ("sgd", "adam")])
def test_telemetry_on_off_identical_and_recorded(label):
    a, b = small_convnet(), small_convnet()
    opt_a, opt_b = make(label, a), make(label, b)
    recorder = opt_b.enable_telemetry(every=2)
    train(a, opt_a, 6, clars_hook(a, opt_a))
    train(b, opt_b, 6, clars_hook(b, opt_b))
    assert all(torch.equal(pa_, pb_) for pa_, pb_ in zip(a.parameters(), b.parameters()))

    data = recorder.collect()
    adapted = [n for n, p in b.named_parameters() if p.ndim > 1]  # exclude_1d: conv and linear weights
    assert data.layers == adapted
    assert data.steps.tolist() == [0, 2, 4]
    assert data.values.shape == (3, len(adapted), 3)
    assert torch.isfinite(data.values).all() and (data.rho > 0).all()
    weights = dict(b.named_parameters())
    # the last recorded ‖w‖ is the weight norm before step 4, so it is not the final norm
    assert data.w_norm[-1, 0].item() != pytest.approx(weights[adapted[0]].norm().item(), rel=1e-12)
    table = data.to_arrow()
    assert isinstance(table, pa.Table) and table.num_rows == 3 * len(adapted)
    assert table.column_names == ["step", "layer", "rho", "w_norm", "g_norm"]
    assert table.column("layer").to_pylist()[:len(adapted)] == adapted
    assert len(recorder) == 0 and recorder.collect().values.shape == (0, len(adapted), 3)


def test_telemetry_grad_norm_is_raw_gradient_norm():
    model = small_convnet()
    opt = build_optimizer("lars", list(model.named_parameters()), lr=0.1, weight_decay=0.5)
    recorder = opt.enable_telemetry()
    x, y = batch()
    nn.functional.cross_entropy(model(x), y).backward()
    expected = {n: (p.grad.norm().item(), p.norm().item()) for n, p in model.named_parameters() if p.ndim > 1}
    opt.step()
    data = recorder.collect()
    for i, name in enumerate(data.layers):
        assert data.g_norm[0, i].item() == pytest.approx(expected[name][0], rel=1e-6)
        assert data.w_norm[0, i].item() == pytest.approx(expected[name][1], rel=1e-6)


@pytest.mark.parametrize("label", list(CONFIGS))
def test_save_load_mid_run_continues_identically(label):
    straight = small_convnet()
    opt = make(label, straight)
    train(straight, opt, 6, clars_hook(straight, opt))

    first = small_convnet()
    opt_first = make(label, first)
    _train_range(first, opt_first, 0, 3)
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "optim": opt_first.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed = small_convnet()
    resumed.load_state_dict(saved["model"])
    opt_resumed = make(label, resumed)
    opt_resumed.load_state_dict(saved["optim"])
    if "step" in opt_resumed.param_groups[0]:
        assert opt_resumed.param_groups[0]["step"] == 3  # the step counter t survives
    _train_range(resumed, opt_resumed, 3, 6)
    assert all(torch.equal(a, b) for a, b in zip(straight.parameters(), resumed.parameters()))


def _train_range(model, opt, start: int, stop: int) -> None:
    hook = clars_hook(model, opt)
    for i in range(start, stop):
        x, y = batch(seed=i)
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        hook(i)
        opt.step()
