"""LAMB (You et al., 2019): Adam moments with a layer-wise trust ratio.

m, v Adam moments (bias correction switchable); r = m̂/(√v̂ + ε) + wd·w; ρ = ‖w‖/‖r‖ (1 if either is 0);
w ← w − lr·ρ·r. Clipping ρ to [clip_lower, clip_upper] gives LAMBC (see `optim.lambc`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from optim.layerwise import (CLIP_DEFAULTS, CPU_DOT_DTYPES, NORM_TILE_BYTES, LayerwiseOptimizer, ParamsLike,
                             chunk_budget, flat_views, safe_trust_ratio, stack_norms)


# `bias_correction=False` as the fused Adam kernel's step count: for every double β < 1, β^(2⁶²) ≤ e⁻⁵¹², so both
# corrections 1 − β^t round to exactly 1. A power of two: exact as the float32 step tensor torch's Adam uses.
UNCORRECTED_STEP = 2.0**62


def adam_direction_(direction: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                    *, step: Tensor, beta1: float, beta2: float, eps: float) -> None:
    """Update the moments and add m̂/(√v̂ + ε) to `direction`, one pass per tensor: torch's fused Adam kernel (what
    `torch.optim.Adam(fused=True)` runs) taking `direction` as its parameters, with lr = −1.

    Hand-written LAMB steps (timm's, and this module's before) take ~8 multi-tensor ops for the same, each a pass
    over the tensors: on a 1-MiB tile in cache (Intel Xeon 2.8 GHz, one thread) the kernel costs 0.85 ns an element,
    those ops ~1.9. LAMB's whole eager step on ResNet-18's channels_last weights took 0.675× [IQR 0.654, 0.695] the
    time of those ops tiled (one process, alternated, 45 steps each; 38.8 against 58.4 ms, torch's foreach Adam 60.0).
    `step` is the 1-based step t (`UNCORRECTED_STEP` without bias correction).
    """
    torch._fused_adam_(direction, grads, exp_avgs, exp_avg_sqs, [], [step] * len(direction), lr=-1.0, beta1=beta1,
                       beta2=beta2, weight_decay=0.0, eps=eps, amsgrad=False, maximize=False)


def lamb_direction(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor], *,
                   step: Tensor, beta1: float, beta2: float, eps: float, weight_decay: float) -> list[Tensor]:
    """Functional multi-tensor core: update the moments, return r = m̂/(√v̂ + ε) + wd·w in new tensors."""
    if weight_decay == 0:
        direction = [torch.zeros_like(p) for p in params]
    else:
        direction = torch._foreach_mul(params, weight_decay)
    adam_direction_(direction, grads, exp_avgs, exp_avg_sqs, step=step, beta1=beta1, beta2=beta2, eps=eps)
    return direction


def tiled_lamb_direction(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, direction: Tensor, *,
                         tile: int, step: Tensor, beta1: float, beta2: float, eps: float, weight_decay: float,
                         want_g: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """`lamb_direction` for one large tensor, all 1-D views of one layout, tile by tile: the moments, r written into
    `direction`, and ‖w‖², ‖r‖² (and ‖g‖² when asked) from each tile while it is in cache.

    A layer too large for the cache (a chunk of its own, `chunk_budget`) is read from memory once this way, where the
    weight decay's pass, the kernel and the norms' dot products would each stream it. ‖g‖ costs a dot product over g
    (telemetry on/off 1.08–1.09 in optim.bench on the Intel machine): the kernel reads g but returns no norm.
    """
    dots = []
    for start in range(0, param.numel(), tile):
        p, g, m, v, r = (t[start:start + tile] for t in (param, grad, exp_avg, exp_avg_sq, direction))
        if weight_decay == 0:
            r.zero_()
        else:
            torch.mul(p, weight_decay, out=r)
        adam_direction_([r], [g], [m], [v], step=step, beta1=beta1, beta2=beta2, eps=eps)
        if want_g:  # while g is the most recently read
            dots.append(torch.dot(g, g))
        dots += [torch.dot(p, p), torch.dot(r, r)]
    sums = torch.stack(dots).view(-1, 3 if want_g else 2).sum(0)
    return sums[-2], sums[-1], sums[0] if want_g else None


def in_layout_of(tensor: Tensor, param: Tensor) -> Tensor:
    """`tensor` with its parameter's strides, copied where they differ (a gradient set by hand, moments saved from
    a model in another memory format): the fused Adam kernel walks a parameter's tensors in the parameter's memory
    order, and `torch.optim.Adam(fused=True)` assumes the same without checking."""
    return tensor if tensor.stride() == param.stride() else torch.empty_like(param).copy_(tensor)


class LAMB(LayerwiseOptimizer):
    """LAMB; see the module docstring for the update and `LayerwiseOptimizer` for clipping options."""

    def __init__(
        self,
        params: ParamsLike,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        bias_correction: bool = True,
        clip_lower: float | None = CLIP_DEFAULTS["clip_lower"],
        clip_upper: float | None = CLIP_DEFAULTS["clip_upper"],
        clip_mode: str = CLIP_DEFAULTS["clip_mode"],
        clip_k: float = CLIP_DEFAULTS["clip_k"],
        clip_beta: float = CLIP_DEFAULTS["clip_beta"],
        exclude_1d: bool = True,
        fused: bool | None = None,
    ):
        betas = tuple(betas) if isinstance(betas, list) else betas  # a config's list; checked with the rest
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, bias_correction=bias_correction,
                        clip_lower=clip_lower, clip_upper=clip_upper, clip_mode=clip_mode, clip_k=clip_k,
                        clip_beta=clip_beta, fused=fused)
        super().__init__(params, defaults, exclude_1d=exclude_1d)
        for p in (p for group in self.param_groups for p in group["params"]):
            if torch.empty_like(p, device="meta").stride() != p.stride():  # keeps a dense tensor's strides only
                name = self._names.get(id(p), f"a {tuple(p.shape)} tensor")
                raise ValueError(f"params: {name} has gaps in memory (strides {p.stride()}); LAMB's step runs torch's "
                                 "fused Adam kernel, which needs every parameter dense: pass it made .contiguous()")

    def _moments(self, params: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Each tensor's Adam moments (exp_avg, exp_avg_sq), made (zeros) on first use."""
        for p in params:
            state = self.state[p]
            if "exp_avg" not in state:
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            else:
                state["exp_avg"] = in_layout_of(state["exp_avg"], p)
                state["exp_avg_sq"] = in_layout_of(state["exp_avg_sq"], p)
        return [self.state[p]["exp_avg"] for p in params], [self.state[p]["exp_avg_sq"] for p in params]

    @staticmethod
    def _bias_corrections(group: dict[str, Any]) -> tuple[float, float]:
        """(1 − β1^t, 1 − β2^t) for the step about to be taken; (1, 1) without bias correction."""
        beta1, beta2 = group["betas"]
        t = group["step"] + 1
        return (1 - beta1**t, 1 - beta2**t) if group["bias_correction"] else (1.0, 1.0)

    def _folded(self, group: dict[str, Any]) -> tuple[float, float, float, float, float]:
        """(β1, β2, scale, ε·√bc2, wd/scale) for the step about to be taken: r = scale·u with u = m/(√v + ε·√bc2) +
        (wd/scale)·w: the bias corrections folded into scalars, no pass over the tensors (timm's algebra)."""
        (beta1, beta2), (bc1, bc2) = group["betas"], self._bias_corrections(group)
        scale = math.sqrt(bc2) / bc1
        return beta1, beta2, scale, group["eps"] * math.sqrt(bc2), group["weight_decay"] / scale

    def _ratio(self, group: dict[str, Any], params: list[Tensor], w_norm: Tensor, r_norm: Tensor,
               g_norm: Tensor | None) -> Tensor:
        """ρ = ‖w‖/‖r‖ of every layer, clipped; recorded when telemetry wants this step (and `g_norm` is given)."""
        rho = self._clip(group, params, safe_trust_ratio(w_norm, w_norm, r_norm))
        if g_norm is not None:
            self._record(group, rho, w_norm, g_norm)
        return rho

    def _fusable(self, group: dict[str, Any]) -> bool:
        return True

    def _update_fused(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        from optim import fused

        beta1, beta2, scale, eps, decay = self._folded(group)
        eps, decay = fused.scalar(eps, params[0]), fused.scalar(decay, params[0])
        exp_avgs, exp_avg_sqs = self._moments(params)
        w_norm, u_norm, g_norm = fused.lamb_norms(params, grads, exp_avgs, exp_avg_sqs, beta1, beta2, eps,
                                                  decay).unbind(1)
        rho = self._ratio(group, params, w_norm, u_norm * scale, g_norm)
        fused.lamb_apply(params, grads, exp_avgs, exp_avg_sqs, rho * (-group["lr"] * scale), beta1, beta2, eps,
                         decay)

    @staticmethod
    def _kernel_step(group: dict[str, Any], device: torch.device) -> Tensor:
        """The fused Adam kernel's step count for the step about to be taken: t, or `UNCORRECTED_STEP`; float32 as
        torch's Adam keeps it, filled on the device (no copy from the host)."""
        t = group["step"] + 1 if group["bias_correction"] else UNCORRECTED_STEP
        return torch.full((), float(t), dtype=torch.float32, device=device)

    def _update_chunk(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        exp_avgs, exp_avg_sqs = self._moments(params)
        grads = [in_layout_of(g, p) for g, p in zip(grads, params)]
        (beta1, beta2), eps, wd, lr = group["betas"], group["eps"], group["weight_decay"], group["lr"]
        step = self._kernel_step(group, params[0].device)
        if not group["adapt"]:  # w ← w − lr·(m̂/(√v̂ + ε) + wd·w) is AdamW's step (its decay is decoupled): one kernel
            torch._fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, [], [step] * len(params), lr=lr, beta1=beta1,
                                beta2=beta2, weight_decay=wd, eps=eps, amsgrad=False, maximize=False)
            return
        if (views := self._tileable(params, grads, exp_avgs, exp_avg_sqs)) is not None:
            self._update_tiled(group, params[0], step, *views)
            return
        g_norm = stack_norms(grads) if self._recording(group) else None
        direction = lamb_direction(params, grads, exp_avgs, exp_avg_sqs, step=step, beta1=beta1, beta2=beta2, eps=eps,
                                   weight_decay=wd)
        rho = self._ratio(group, params, stack_norms(params), stack_norms(direction), g_norm)
        torch._foreach_addcmul_(params, direction, list((rho * -lr).unbind(0)))

    @staticmethod
    def _tileable(params: list[Tensor], *others: list[Tensor]) -> list[Tensor] | None:
        """A chunk of one CPU tensor larger than a chunk (`chunk_budget`), as 1-D views (`flat_views`) of it, its
        gradient and moments; None for any other chunk."""
        param = params[0]
        budget = chunk_budget(param.device, param.element_size())
        if (len(params) != 1 or param.device.type != "cpu" or param.dtype not in CPU_DOT_DTYPES
                or budget is None or param.numel() <= budget):
            return None
        views = flat_views(params, *others)
        return None if views is None else [v[0] for v in views]

    def _update_tiled(self, group: dict[str, Any], param: Tensor, step: Tensor, flat_p: Tensor, flat_g: Tensor,
                      flat_m: Tensor, flat_v: Tensor) -> None:
        """One large tensor's step through `tiled_lamb_direction`, then w ← w − lr·ρ·r in one pass."""
        direction = torch.empty_like(flat_p)
        ww, rr, gg = tiled_lamb_direction(
            flat_p, flat_g, flat_m, flat_v, direction, tile=NORM_TILE_BYTES // param.element_size(), step=step,
            beta1=group["betas"][0], beta2=group["betas"][1], eps=group["eps"], weight_decay=group["weight_decay"],
            want_g=self._recording(group))
        rho = self._ratio(group, [param], ww.sqrt()[None], rr.sqrt()[None], None if gg is None else gg.sqrt()[None])
        flat_p.addcmul_(direction, rho[0] * -group["lr"])
