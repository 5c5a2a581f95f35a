"""One or two steps of every optimizer checked against the formulas, computed by hand on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from optim import build_optimizer, tvlars_phi
from optim.layerwise import spread

W0, G = [3.0, 4.0], [0.6, 0.8]  # ‖w‖ = 5, ‖g‖ = 1


def layer(values=W0) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.tensor([values], dtype=torch.float64))  # 2-D: gets a trust ratio


def step(opt, params, grads) -> None:
    for p, g in zip(params, grads):
        p.grad = torch.tensor(g, dtype=torch.float64).reshape(p.shape)
    opt.step()


def norm(v) -> float:
    return math.sqrt(sum(x * x for x in v))


def lars_by_hand(steps: int, lr: float, wd: float, eta: float, m: float, scale=lambda rho, t: rho):
    w, buf = list(W0), [0.0, 0.0]
    for t in range(steps):
        d = [g + wd * x for g, x in zip(G, w)]
        rho = scale(eta * norm(w) / norm(d), t)
        buf = [m * b + rho * di for b, di in zip(buf, d)]
        w = [x - lr * b for x, b in zip(w, buf)]
    return w


def assert_close(p: torch.Tensor, expected) -> None:
    torch.testing.assert_close(p.detach().flatten(), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-14)


def test_lars_first_step_numbers():
    p = layer()
    opt = build_optimizer("lars", [p], lr=1.0, momentum=0.9, weight_decay=0.1, eta=0.01)
    step(opt, [p], [G])
    # d = [0.9, 1.2], ‖d‖ = 1.5, ρ = 0.01·5/1.5 = 1/30, buf = ρ·d = [0.03, 0.04]
    assert_close(p, [2.97, 3.96])


def test_lars_two_steps_momentum():
    p = layer()
    opt = build_optimizer("lars", [p], lr=1.0, momentum=0.9, weight_decay=0.1, eta=0.01)
    step(opt, [p], [G])
    step(opt, [p], [G])
    assert_close(p, lars_by_hand(2, lr=1.0, wd=0.1, eta=0.01, m=0.9))


def test_lars_paper_denominator():
    p = layer()
    opt = build_optimizer("lars", [p], lr=1.0, momentum=0.9, weight_decay=0.1, eta=0.01, trust_denominator="paper")
    step(opt, [p], [G])
    rho = 0.01 * 5 / (1.0 + 0.1 * 5)  # ‖g‖ + wd‖w‖
    assert_close(p, [3 - rho * 0.9, 4 - rho * 1.2])


def test_lars_zero_norm_gives_unit_ratio():
    p = layer([0.0, 0.0])
    opt = build_optimizer("lars", [p], lr=0.5, momentum=0.0, eta=0.01)
    step(opt, [p], [G])
    assert_close(p, [-0.3, -0.4])  # ρ = 1 because ‖w‖ = 0


@pytest.mark.parametrize("lr, expected", [
    (0.01, [3 - 0.01 * 0.9, 4 - 0.01 * 1.2]),  # ρ/lr = 3.33 → clipped to 1
    (1.0, [2.97, 3.96]),  # ρ/lr = 1/30 < 1 → unchanged
])
def test_larc_clip(lr, expected):
    p = layer()
    opt = build_optimizer("larc", [p], lr=lr, momentum=0.9, weight_decay=0.1, eta=0.01)
    step(opt, [p], [G])
    assert_close(p, expected)


def test_tvlars_two_steps():
    lam, d_e, alpha, gmin = 0.5, 2, 1.0, 0.1
    p = layer()
    opt = build_optimizer("tvlars", [p], lr=1.0, momentum=0.9, weight_decay=0.1, eta=0.01,
                          lam=lam, delay_steps=d_e, alpha=alpha, gamma_min=gmin)
    step(opt, [p], [G])
    step(opt, [p], [G])

    def phi(t):  # φ(0) = 1/(1+e^{-1}) + 0.1, φ(1) = 1/(1+e^{-0.5}) + 0.1
        return 1 / (alpha + math.exp(lam * (t - d_e))) + gmin

    assert_close(p, lars_by_hand(2, lr=1.0, wd=0.1, eta=0.01, m=0.9, scale=lambda rho, t: rho * phi(t)))
    assert opt.param_groups[0]["step"] == 2


def test_clars_uses_supplied_per_sample_norms():
    p = layer()
    opt = build_optimizer("clars", [p], lr=1.0, momentum=0.9, weight_decay=0.1, eta=0.01)
    opt.set_per_sample_grad_norms([p], [torch.tensor(2.0, dtype=torch.float64)])
    step(opt, [p], [G])
    rho = 0.01 * 5 / (2.0 + 0.1 * 5)  # mean per-sample norm + wd‖w‖ = 0.02
    assert_close(p, [3 - rho * 0.9, 4 - rho * 1.2])


def test_clars_without_norms_is_an_error():
    p = layer()
    opt = build_optimizer("clars", [p], lr=1.0)
    p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match="set_per_sample_grad_norms"):
        opt.step()


def lamb_first_step(wd: float, bias_correction: bool, b1=0.9, b2=0.999):
    mc, vc = (1.0, 1.0) if bias_correction else (1 - b1, 1 - b2)
    r = [mc * g / math.sqrt(vc * g * g) + wd * w for g, w in zip(G, W0)]
    return r, norm(W0) / norm(r)


@pytest.mark.parametrize("bias_correction", [True, False])
def test_lamb_first_step(bias_correction):
    p = layer()
    opt = build_optimizer("lamb", [p], lr=0.1, weight_decay=0.1, eps=0.0, bias_correction=bias_correction)
    step(opt, [p], [G])
    # with bias correction r = g/|g| + wd·w = [1.3, 1.4]; without: 0.1g/√(0.001g²) = 3.162·sign(g)
    r, rho = lamb_first_step(0.1, bias_correction)
    assert_close(p, [w - 0.1 * rho * ri for w, ri in zip(W0, r)])


def test_lamb_two_steps():
    p = layer()
    opt = build_optimizer("lamb", [p], lr=0.1, weight_decay=0.1, eps=1e-6)
    step(opt, [p], [G])
    step(opt, [p], [[-0.3, 0.4]])
    expected = lamb_by_hand([G, [-0.3, 0.4]], 0.1, 0.1, 1e-6, True)
    torch.testing.assert_close(p.detach().flatten(), torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-12)


def lamb_by_hand(grads, lr: float, wd: float, eps: float, adapt: bool) -> list[float]:
    """LAMB's steps from W0 by the module docstring's formulas (without a trust ratio: ρ = 1)."""
    w, m, v = list(W0), [0.0, 0.0], [0.0, 0.0]
    for t, g in enumerate(grads, start=1):
        m = [0.9 * a + 0.1 * b for a, b in zip(m, g)]
        v = [0.999 * a + 0.001 * b * b for a, b in zip(v, g)]
        r = [(a / (1 - 0.9**t)) / (math.sqrt(b / (1 - 0.999**t)) + eps) + wd * x for a, b, x in zip(m, v, w)]
        rho = norm(w) / norm(r) if adapt else 1.0
        w = [x - lr * rho * ri for x, ri in zip(w, r)]
    return w


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_lamb_without_trust_ratio_steps_by_r(wd):
    """A group without a trust ratio (an excluded tensor's, or one that says so) takes w ← w − lr·r."""
    p = layer()
    opt = build_optimizer("lamb", [{"params": [p], "adapt": False, "weight_decay": wd}], lr=0.1, eps=1e-6)
    grads = [G, [-0.3, 0.4], [0.2, 0.1]]
    for g in grads:
        step(opt, [p], [g])
    torch.testing.assert_close(p.detach().flatten(), torch.tensor(lamb_by_hand(grads, 0.1, wd, 1e-6, False),
                                                                  dtype=torch.float64), rtol=1e-12, atol=1e-14)


def test_lambc_clips_to_upper_bound():
    p = layer()
    opt = build_optimizer("lambc", [p], lr=0.1, weight_decay=0.1, eps=0.0)  # default clip_upper = 1
    step(opt, [p], [G])
    r, rho = lamb_first_step(0.1, True)
    assert rho > 1  # 5/√3.65 = 2.62, so the clip binds
    assert_close(p, [w - 0.1 * ri for w, ri in zip(W0, r)])


def test_lower_clip_bound_applies_to_lars():
    p = layer()
    opt = build_optimizer("lars", [p], lr=1.0, momentum=0.0, weight_decay=0.1, eta=0.01, clip_lower=0.5)
    step(opt, [p], [G])  # ρ = 1/30 raised to 0.5
    assert_close(p, [3 - 0.5 * 0.9, 4 - 0.5 * 1.2])


def test_adaptive_clip_holds_ratio_to_running_band():
    p = layer()
    opt = build_optimizer("lars", [p], lr=1.0, momentum=0.0, eta=0.01, clip_mode="adaptive", clip_k=2.0)
    recorder = opt.enable_telemetry()
    step(opt, [p], [G])
    step(opt, [p], [[6.0, 8.0]])  # raw ρ drops 10×; after one step the band is [ρ0, ρ0] (std 0)
    rho = recorder.collect().rho[:, 0]
    rho0 = 0.01 * 5 / 1.0
    assert rho[0].item() == pytest.approx(rho0, rel=1e-6)
    assert rho[1].item() == pytest.approx(rho0, rel=1e-6)


def test_adaptive_bounds_have_no_spread_where_the_moments_differ_by_rounding():
    """E[ρ²] − E[ρ]² one unit in the last place above 0 is rounding: its root (3.7e-9 here) once set the bounds."""
    mean = torch.tensor([1 / 3, 1.0], dtype=torch.float64)
    second = torch.stack([torch.nextafter(mean[0] * mean[0], torch.tensor(1.0, dtype=torch.float64)),
                          torch.tensor(1.01, dtype=torch.float64)])
    assert (second - mean * mean)[0] > 0
    got = spread(second, mean)
    assert got[0].item() == 0.0 and got[1].item() == pytest.approx(0.1, rel=1e-12)


def test_exclude_1d_bias_gets_plain_momentum_sgd():
    w, b = layer(), torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = build_optimizer("lars", [w, b], lr=0.5, momentum=0.9, weight_decay=0.1, eta=0.01)
    step(opt, [w, b], [G, [0.5, 0.5]])
    step(opt, [w, b], [G, [0.5, 0.5]])
    # no decay, ρ = 1: buf = g then 0.9g + g
    assert_close(b, [1.0 - 0.5 * 0.5 - 0.5 * 0.95, -2.0 - 0.5 * 0.5 - 0.5 * 0.95])


def test_exclude_1d_off_adapts_bias():
    b = torch.nn.Parameter(torch.tensor(W0, dtype=torch.float64))
    opt = build_optimizer("lars", [b], lr=1.0, momentum=0.9, weight_decay=0.1, eta=0.01, exclude_1d=False)
    step(opt, [b], [G])
    assert_close(b, [2.97, 3.96])


def test_tvlars_phi_matches_definition():
    assert tvlars_phi(3, 0.5, 2, 1.0, 0.1) == pytest.approx(1 / (1 + math.exp(0.5)) + 0.1, rel=1e-15)


@pytest.mark.parametrize("name, hp, expected", [
    ("sgd", dict(lr=0.1, momentum=0.9, weight_decay=0.1), [3 - 0.1 * 0.9, 4 - 0.1 * 1.2]),
    ("adam", dict(lr=0.1, eps=0.0), [3 - 0.1, 4 - 0.1]),  # first Adam step moves each weight by lr
])
def test_baselines_through_factory(name, hp, expected):
    p = layer()
    opt = build_optimizer(name, [p], **hp)
    step(opt, [p], [G])
    assert_close(p, expected)


def test_baseline_exclude_1d_skips_decay_on_biases():
    w, b = layer(), torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = build_optimizer("sgd", [w, b], lr=0.1, weight_decay=0.5)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.5, 0.0]
    assert all("adapt" not in g for g in opt.param_groups)
    step(opt, [w, b], [G, [0.5, 0.5]])
    assert_close(b, [1.0 - 0.05, -2.0 - 0.05])


def test_tiled_norms_match_separate_passes():
    """`tiled_norms`' dot products over tiles give the separate passes' norms, for every combination asked (with and
    without weight decay, tensors smaller and larger than a tile, a channels_last one)."""
    import torch

    from optim.layerwise import NORM_TILE_BYTES, decayed_gradients, flat_views, stack_norms, tiled_norms

    def norms(tensors):  # in float64, independent of the views both functions take
        return torch.stack([torch.linalg.vector_norm(t.double()) for t in tensors]).float()

    def assert_close(got, want):  # float32 sums over up to 2.5e5 terms
        torch.testing.assert_close(got, want, rtol=1e-5, atol=0)

    gen = torch.Generator().manual_seed(0)
    big = NORM_TILE_BYTES // 4 * 2 + 17  # three tiles, the last partial
    params = [torch.randn(shape, generator=gen) for shape in ((big,), (64, 3, 3, 3), (16, 8, 3, 3), (10,))]
    params[2] = params[2].to(memory_format=torch.channels_last)
    grads = [torch.randn(p.shape, generator=gen) for p in params]
    grads[2] = grads[2].to(memory_format=torch.channels_last)
    for wd in (0.0, 5e-4, 0.5):
        expected_d = decayed_gradients(grads, params, wd)
        for want_d in (False, True):
            for want_g in (False, True):
                got = tiled_norms(*flat_views(grads, params), wd, want_d, want_g)
                assert_close(got.w, norms(params))
                assert_close(stack_norms(params), norms(params))
                assert (got.d is None) == (not want_d) and (got.g is None) == (not want_g)
                if want_d:
                    assert_close(got.d, norms(expected_d))
                if want_g:
                    assert_close(got.g, norms(grads))


def test_memory_order_views_share_storage():
    """A contiguous and a channels_last tensor are viewed flat without a copy; a transposed one has no such view, and
    tensors laid out differently get no views together."""
    import torch

    from optim.layerwise import flat_views, memory_order_view

    conv = torch.randn(16, 8, 3, 3).to(memory_format=torch.channels_last)
    for t in (torch.randn(10, 32), conv):
        view = memory_order_view(t)
        assert view.dim() == 1 and view.numel() == t.numel() and view.data_ptr() == t.data_ptr()
        view.mul_(2)  # writes reach the tensor
        assert torch.equal(view.sort().values, t.reshape(-1).sort().values)
    assert memory_order_view(torch.randn(10, 32).t()) is None
    assert flat_views([conv], [torch.randn(16, 8, 3, 3)]) is None  # laid out differently: no matching elements
    assert flat_views([conv], [torch.randn(16, 8, 3, 3).to(memory_format=torch.channels_last)]) is not None


def test_tiled_norms_take_a_cancelling_layer_from_d_itself():
    """Where g ≈ −wd·w, ‖g‖² + 2wd⟨g,w⟩ + wd²‖w‖² cancels to a few float32 roundings of its terms: that layer's ‖d‖
    comes from d itself, within 1e-5 of float64's; the sum alone is off by more than 1e-3 there."""
    import torch

    from optim.layerwise import tiled_norms

    gen = torch.Generator().manual_seed(0)
    wd = 0.1
    w = torch.randn(100_000, generator=gen)
    g = -wd * w + 1e-4 * torch.randn(100_000, generator=gen)  # d = g + wd·w is the small noise
    exact = torch.linalg.vector_norm(g.double() + wd * w.double()).item()
    by_sum = (torch.dot(g, g) + 2 * wd * torch.dot(g, w) + wd * wd * torch.dot(w, w)).clamp_min(0).sqrt().item()
    assert abs(by_sum - exact) > 1e-3 * exact
    got = tiled_norms([g], [w], wd, want_d=True, want_g=False).d.item()
    assert abs(got - exact) <= 1e-5 * exact