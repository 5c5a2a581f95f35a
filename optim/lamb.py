"""LAMB (You et al., 2019): Adam moments with a layer-wise trust ratio.

m, v Adam moments (bias correction switchable); r = m̂/(√v̂ + ε) + wd·w; ρ = ‖w‖/‖r‖ (1 if either is 0);
w ← w − lr·ρ·r. Clipping ρ to [clip_lower, clip_upper] gives LAMBC (see `optim.lambc`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from optim.layerwise import CLIP_DEFAULTS, LayerwiseOptimizer, ParamsLike, safe_trust_ratio, stack_norms


def lamb_direction(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    bias_correction1: float,
    bias_correction2: float,
) -> tuple[list[Tensor], float]:
    """Functional multi-tensor core: update the moments, return (u, scale) with r = scale·u.

    The bias corrections are folded into one scalar (r = √bc2/bc1 · m/(√v + ε√bc2) + wd·w) so they cost
    no pass over the tensors; the same algebra as timm's foreach Lamb.
    """
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
    sqrt_bc2 = math.sqrt(bias_correction2)
    scale = sqrt_bc2 / bias_correction1
    direction = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(direction, eps * sqrt_bc2)
    torch._foreach_div_(direction, exp_avgs)
    torch._foreach_reciprocal_(direction)  # (√v + ε√bc2)/m inverted in place: no second allocation
    if weight_decay != 0:
        torch._foreach_add_(direction, params, alpha=weight_decay / scale)
    return direction, scale


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

    def _moments(self, params: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Each tensor's Adam moments (exp_avg, exp_avg_sq), made (zeros) on first use."""
        for p in params:
            state = self.state[p]
            if "exp_avg" not in state:
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return [self.state[p]["exp_avg"] for p in params], [self.state[p]["exp_avg_sq"] for p in params]

    @staticmethod
    def _bias_corrections(group: dict[str, Any]) -> tuple[float, float]:
        """(1 − β1^t, 1 − β2^t) for the step about to be taken; (1, 1) without bias correction."""
        beta1, beta2 = group["betas"]
        t = group["step"] + 1
        return (1 - beta1**t, 1 - beta2**t) if group["bias_correction"] else (1.0, 1.0)

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

        (beta1, beta2), (bc1, bc2) = group["betas"], self._bias_corrections(group)
        scale = math.sqrt(bc2) / bc1  # r = scale·u, as in `lamb_direction`
        eps = fused.scalar(group["eps"] * math.sqrt(bc2), params[0])
        decay = fused.scalar(group["weight_decay"] / scale, params[0])
        exp_avgs, exp_avg_sqs = self._moments(params)
        w_norm, u_norm, g_norm = fused.lamb_norms(params, grads, exp_avgs, exp_avg_sqs, beta1, beta2, eps,
                                                  decay).unbind(1)
        rho = self._ratio(group, params, w_norm, u_norm * scale, g_norm)
        fused.lamb_apply(params, grads, exp_avgs, exp_avg_sqs, rho * (-group["lr"] * scale), beta1, beta2, eps,
                         decay)

    def _update_chunk(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        beta1, beta2 = group["betas"]
        bc1, bc2 = self._bias_corrections(group)
        exp_avgs, exp_avg_sqs = self._moments(params)
        g_norm = stack_norms(grads) if group["adapt"] and self._recording(group) else None
        direction, scale = lamb_direction(
            params, grads, exp_avgs, exp_avg_sqs, beta1=beta1, beta2=beta2, eps=group["eps"],
            weight_decay=group["weight_decay"], bias_correction1=bc1, bias_correction2=bc2)
        lr = group["lr"]
        if not group["adapt"]:
            torch._foreach_add_(params, direction, alpha=-lr * scale)
            return
        w_norm = stack_norms(params)
        rho = self._ratio(group, params, w_norm, stack_norms(direction) * scale, g_norm)
        torch._foreach_addcmul_(params, direction, list((rho * (-lr * scale)).unbind(0)))
