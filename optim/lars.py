"""LARS: layer-wise adaptive rate scaling (You et al., 2017) with momentum.

Per layer: d = g + wd·w; ρ = η‖w‖/‖d‖ (1 if either norm is 0); buf = m·buf + ρ·d; w ← w − lr·buf.
`trust_denominator="paper"` uses ‖g‖ + wd‖w‖ instead of ‖d‖ (the paper's and timm's form).
LARC, TVLARS and CLARS are subclasses that change how ρ is formed (`_raw_ratio` / `_scale_ratio`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from optim.layerwise import (
    CLIP_DEFAULTS,
    LayerNorms,
    LayerwiseOptimizer,
    ParamsLike,
    decayed_gradients,
    flat_views,
    safe_trust_ratio,
    stack_norms,
    tiled_norms,
)


def lars_update(
    params: list[Tensor],
    bufs: list[Tensor] | None,
    rho: Tensor | None,
    *,
    decayed: list[Tensor],
    lr: Any,
    momentum: float,
) -> None:
    """Functional multi-tensor core: buf = m·buf + ρ·d; w ← w − lr·buf (ρ = 1 when None).

    `decayed` is d = g + wd·w (the gradients themselves when wd = 0); `rho` one ratio per tensor.
    """
    if bufs is None:  # no momentum: w ← w − lr·ρ·d in one pass
        if rho is None:
            torch._foreach_add_(params, decayed, alpha=-lr)
        else:
            torch._foreach_addcmul_(params, decayed, list((rho * -lr).unbind(0)))
        return
    torch._foreach_mul_(bufs, momentum)
    if rho is None:
        torch._foreach_add_(bufs, decayed)
    else:
        torch._foreach_addcmul_(bufs, decayed, list(rho.unbind(0)))
    torch._foreach_add_(params, bufs, alpha=-lr)


def fits_fused_sgd(params: list[Tensor], lr: Any) -> bool:
    """Whether `fused_sgd_update` (with `tiled_norms`) may take these tensors: float32 on the CPU, a float learning
    rate; their `flat_views` decide the rest."""
    return params[0].device.type == "cpu" and params[0].dtype == torch.float32 and not isinstance(lr, Tensor)


# The smallest ρ that `fused_sgd_update` passes as the kernel's dampening 1 − ρ: the kernel forms ρ back as
# 1 − (1 − ρ) in double precision, within 2⁻⁵³/ρ of it relatively: 2⁻²⁷ here, far below float32's 2⁻²⁴.
SMALLEST_DAMPENED_RHO = 2.0**-26


def fused_sgd_update(params: list[Tensor], grads: list[Tensor], bufs: list[Tensor] | None, rho: Tensor | None, *,
                     lr: float, momentum: float, weight_decay: float) -> None:
    """buf = m·buf + ρ·(g + wd·w); w ← w − lr·buf (without momentum w ← w − lr·ρ·(g + wd·w)) by torch's fused SGD
    kernel (what `torch.optim.SGD(fused=True)` runs): one pass per tensor reading w, g and buf, writing w and buf;
    the tensors given as their `flat_views`.

    The kernel applies the weight decay itself, so d is never written, and leaves the gradients as they are. ρ
    enters as its dampening 1 − ρ (buf = m·buf + (1 − dampening)·d), without momentum as its learning rate lr·ρ;
    a ratio below `SMALLEST_DAMPENED_RHO` takes the multi-tensor ops. Called per tensor through `torch._fused_sgd_`
    because `torch.optim.sgd.sgd` takes one dampening and one learning rate for all its tensors. Measured when ρ
    entered as the kernel's `grad_scale` (which writes the scaled d back, so d had to be written first): ResNet-18's
    weights, one thread, interleaved, LARS's eager step 17.96 → 15.33 ms against the three multi-tensor ops of
    `lars_update`, which stream the weights eight times to the kernel's five. Flat views in memory order because,
    given ResNet-18's weights channels_last, as a trial's are, the kernel took LARS's eager step to 21.8 ms against
    15.1 ms contiguous; through the views, 14.2 ms.
    """
    common = dict(weight_decay=weight_decay, nesterov=False, maximize=False, is_first_step=False)
    if rho is None:
        torch._fused_sgd_(params, grads, bufs or [], momentum=momentum, lr=lr, dampening=0.0, **common)
        return
    for i, ratio in enumerate(rho.tolist()):
        p, g = [params[i]], [grads[i]]
        if bufs is None:
            torch._fused_sgd_(p, g, [], momentum=0.0, lr=lr * ratio, dampening=0.0, **common)
        elif ratio == 0 or ratio >= SMALLEST_DAMPENED_RHO:
            torch._fused_sgd_(p, g, [bufs[i]], momentum=momentum, lr=lr, dampening=1.0 - ratio, **common)
        else:
            lars_update(p, [bufs[i]], rho[i:i + 1], decayed=decayed_gradients(g, p, weight_decay), lr=lr,
                        momentum=momentum)


class LARS(LayerwiseOptimizer):
    """LARS with momentum; see the module docstring for the update and `LayerwiseOptimizer` for clipping."""

    # Its eager step runs torch's fused SGD kernel (`fused_sgd_update`), so compiling saves less than LAMB's ~1 ns per
    # element and step: ResNet-18's LARS step 15.07 → 10.14 ms (optim.bench, 11.7 M adapted weights: 0.42 ns), and
    # the same ~10-s compile pays after ~2.4·10¹⁰ element-steps; rounded down (a CIFAR ResNet-18 fuses at step 1,792).
    fuse_after_element_steps = 2 * 10**10

    def __init__(
        self,
        params: ParamsLike,
        lr: float = 1.0,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 1e-3,
        trust_denominator: str = "lars",
        clip_lower: float | None = CLIP_DEFAULTS["clip_lower"],
        clip_upper: float | None = CLIP_DEFAULTS["clip_upper"],
        clip_mode: str = CLIP_DEFAULTS["clip_mode"],
        clip_k: float = CLIP_DEFAULTS["clip_k"],
        clip_beta: float = CLIP_DEFAULTS["clip_beta"],
        exclude_1d: bool = True,
        fused: bool | None = None,
        **extra: Any,
    ):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                        trust_denominator=trust_denominator, clip_lower=clip_lower, clip_upper=clip_upper,
                        clip_mode=clip_mode, clip_k=clip_k, clip_beta=clip_beta, fused=fused, **extra)
        super().__init__(params, defaults, exclude_1d=exclude_1d)

    def _raw_ratio(self, group: dict[str, Any], params: list[Tensor], norms: LayerNorms) -> Tensor:
        """ρ = η‖w‖ / denominator, before any scaling or clipping."""
        if group["trust_denominator"] == "paper":
            denominator = norms.g + group["weight_decay"] * norms.w
        else:
            denominator = norms.d
        return safe_trust_ratio(group["eta"] * norms.w, norms.w, denominator)

    def _scale_ratio(self, group: dict[str, Any], rho: Tensor) -> Tensor:
        """Per-variant transform of ρ (LARC clip, TVLARS φ(t)); identity for LARS."""
        return rho

    def _needs_grad_norm(self, group: dict[str, Any]) -> bool:
        return group["trust_denominator"] == "paper" or self._recording(group)

    def _needs_decayed_norm(self, group: dict[str, Any]) -> bool:
        return group["trust_denominator"] != "paper"

    def _momentum_buffers(self, params: list[Tensor]) -> list[Tensor]:
        """Each tensor's momentum buffer, made (zeros) on first use."""
        for p in params:
            if "momentum_buffer" not in self.state[p]:
                self.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return [self.state[p]["momentum_buffer"] for p in params]

    def _ratio(self, group: dict[str, Any], params: list[Tensor], norms: LayerNorms) -> Tensor:
        """ρ of every layer: raw, scaled, clipped; recorded when telemetry wants this step."""
        rho = self._clip(group, params, self._scale_ratio(group, self._raw_ratio(group, params, norms)))
        if self._recording(group):
            self._record(group, rho, norms.w, norms.g)
        return rho

    def _fusable(self, group: dict[str, Any]) -> bool:
        return group["momentum"] != 0

    def _update_fused(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        from optim import fused

        norms = fused.lars_norms(params, grads, group["weight_decay"]).unbind(1)
        rho = self._ratio(group, params, LayerNorms(*norms))
        fused.lars_apply(params, grads, self._momentum_buffers(params), rho, fused.scalar(group["lr"], params[0]),
                         group["momentum"], group["weight_decay"])

    def _update_chunk(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        wd, momentum, lr = group["weight_decay"], group["momentum"], group["lr"]
        bufs = self._momentum_buffers(params) if momentum != 0 else None
        want_d, want_g = self._needs_decayed_norm(group), self._needs_grad_norm(group)
        tensors = [params, grads] + ([bufs] if bufs is not None else [])
        flat = flat_views(*tensors) if fits_fused_sgd(params, lr) else None
        if flat is not None:  # d never written: norms from dot products, the kernel applies the weight decay
            flat_p, flat_g, *flat_b = flat
            rho = self._ratio(group, params, tiled_norms(flat_g, flat_p, wd, want_d, want_g)) if group["adapt"] else None
            fused_sgd_update(flat_p, flat_g, flat_b[0] if flat_b else None, rho, lr=lr, momentum=momentum,
                             weight_decay=wd)
            return
        decayed, rho = decayed_gradients(grads, params, wd), None
        if group["adapt"]:
            norms = LayerNorms(stack_norms(params), stack_norms(decayed) if want_d else None,
                               stack_norms(grads) if want_g else None)
            rho = self._ratio(group, params, norms)
        lars_update(params, bufs, rho, decayed=decayed, lr=lr, momentum=momentum)
