"""Fused trust-ratio passes: the two memory-bound passes of LARS and LAMB compiled by torch.compile (Inductor).

Eager multi-tensor ops stream every layer from memory once per op: torch's foreach SGD-momentum makes
~11 passes of a layer's size, LARS adds two norm passes (1.27–1.34× SGD-momentum in optim.bench) and no
tiling of eager ops helped (the note in `tiled_norms`). Compiled, each optimizer is two passes:
one reading w and g (LAMB: and its moments) for every norm at once, then one fused update after the
per-layer ratio ρ is formed from those norms by the same eager code as before (clipping, φ(t), CLARS'
denominator, telemetry). Per-step values (lr, bias corrections, ρ) enter as tensors, so a schedule never
recompiles; `dynamic=False` gives each set of shapes its own static kernels.

Why torch.compile and not hand-written kernels: Inductor writes the C++/OpenMP (CPU) or Triton (CUDA)
loops; the cost is the compile itself, which is why `optim.layerwise.fuse_step` gates it by default.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch._dynamo
from torch import Tensor

# What a compile that cannot happen raises (no C++ compiler, an op Dynamo cannot trace): before any kernel
# has run, so nothing was written. A failure while kernels run is an ordinary error and is not caught.
COMPILE_ERRORS = torch._dynamo.exc.TorchDynamoException  # Inductor's errors included
# Each distinct set of shapes (a model, a parameter group) is one compiled entry; Dynamo's default of 8 per
# function would silently fall back to eager in a process that builds many models (tests, benches).
RECOMPILE_LIMIT = 64


def _lars_norms(params: list[Tensor], grads: list[Tensor], weight_decay: float) -> Tensor:
    """(n, 3): per tensor ‖w‖, ‖d‖ (d = g + wd·w, never stored) and ‖g‖, from one read of w and g."""
    rows = []
    for p, g in zip(params, grads):
        d = g + weight_decay * p
        rows.append(torch.stack([p.square().sum(), d.square().sum(), g.square().sum()]))
    return torch.stack(rows).sqrt()


def _lars_apply(params: list[Tensor], grads: list[Tensor], bufs: list[Tensor], rho: Tensor, lr: Tensor,
                momentum: float, weight_decay: float) -> None:
    """buf = m·buf + ρ·(g + wd·w); w ← w − lr·buf, per tensor in one pass."""
    for i, (p, g, b) in enumerate(zip(params, grads, bufs)):
        b.mul_(momentum).add_((g + weight_decay * p) * rho[i])
        p.sub_(b * lr)


def _direction(p: Tensor, g: Tensor, m: Tensor, v: Tensor, beta1: float, beta2: float, eps: Tensor,
               decay: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(u, m', v'): Adam's moments after this gradient (as eager LAMB forms them: lerp, then β2·v + (1 − β2)·g²)
    and u = m'/(√v' + eps) + decay·w."""
    m, v = m.lerp(g, 1.0 - beta1), v * beta2 + (1.0 - beta2) * g * g
    return m / (v.sqrt() + eps) + decay * p, m, v


def _lamb_norms(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                beta1: float, beta2: float, eps: Tensor, decay: Tensor) -> Tensor:
    """(n, 3): per tensor ‖w‖, ‖u‖ and ‖g‖ (`_direction`); writes nothing.

    Pure on purpose: a compile that fails in `lamb_apply` leaves every moment as it was, so the step can be
    taken eagerly instead. Costs re-reading g, m and v in the second pass (vs storing the moments here).
    """
    rows = []
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        u, _, _ = _direction(p, g, m, v, beta1, beta2, eps, decay)
        rows.append(torch.stack([p.square().sum(), u.square().sum(), g.square().sum()]))
    return torch.stack(rows).sqrt()


def _lamb_apply(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                coeff: Tensor, beta1: float, beta2: float, eps: Tensor, decay: Tensor) -> None:
    """Store the moments and w ← w + coeff·u per tensor (coeff = −lr·scale·ρ), u as in `_lamb_norms`."""
    for i, (p, g, m, v) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        u, m_new, v_new = _direction(p, g, m, v, beta1, beta2, eps, decay)
        p.add_(u * coeff[i])
        m.copy_(m_new)
        v.copy_(v_new)


def _compiled(fn: Callable) -> Callable:
    """`fn` compiled whole, with static shapes (each shape set gets its own kernels)."""
    return torch.compile(fn, fullgraph=True, dynamic=False)


lars_norms = _compiled(_lars_norms)
lars_apply = _compiled(_lars_apply)
lamb_norms = _compiled(_lamb_norms)
lamb_apply = _compiled(_lamb_apply)


@contextlib.contextmanager
def compiling() -> Iterator[None]:
    """Room for one compiled entry per model and group (see `RECOMPILE_LIMIT`)."""
    with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
        yield


def scalar(value: float, like: Tensor) -> Tensor:
    """A per-step value as a 0-dim tensor on `like`'s device and dtype (no recompile when it changes).

    `torch.full` fills on the device, where `torch.tensor` would copy the value from host memory: on CUDA a
    blocking copy, a host sync in every step (`tests/test_cuda.py` checks a step makes none)."""
    return torch.full((), value, dtype=like.dtype, device=like.device)
