"""Shared base of the trust-ratio optimizers: exclusion (1-D tensors, or the names a caller gives), chunked
multi-tensor passes, trust-ratio clipping (fixed or adaptive), the step counter t and telemetry.

Every trust-ratio optimizer computes, per parameter tensor ("layer"), a ratio ρ from stacked norms in
one vectorised op, so nothing is synchronised with the host per layer.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from collections.abc import Collection, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from optim.checks import check_hparams
from optim.dynamo_import import defer_dynamo_import
from optim.telemetry import TrustRatioTelemetry

ParamsLike = Iterable[Tensor] | Iterable[tuple[str, Tensor]] | Iterable[dict[str, Any]]

# The trust-ratio clipping options every layer-wise optimizer takes, with their defaults (unbounded, fixed mode;
# the adaptive mode's bounds EMA-mean ± 3·EMA-std with decay 0.99): their one home.
CLIP_DEFAULTS: dict[str, Any] = {"clip_lower": None, "clip_upper": None, "clip_mode": "fixed", "clip_k": 3.0,
                                 "clip_beta": 0.99}


def as_groups(params: ParamsLike) -> list[dict[str, Any]]:
    """Param groups (dicts) from tensors, (name, tensor) pairs or group dicts; entries kept as given."""
    items = list(params)
    if not items:
        raise ValueError("params: got an empty parameter list")
    return items if isinstance(items[0], dict) else [{"params": items}]


def normalize_params(params: ParamsLike) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """Param groups (dicts) plus parameter names, from tensors, (name, tensor) pairs or group dicts."""
    names: dict[int, str] = {}
    groups: list[dict[str, Any]] = []
    for group in as_groups(params):
        tensors = []
        for entry in group["params"]:
            if isinstance(entry, tuple):
                names[id(entry[1])] = entry[0]
                entry = entry[1]
            tensors.append(entry)
        groups.append({**group, "params": tensors})
    return groups, names


def _is_excluded(entry: Tensor | tuple[str, Tensor], exclude: Collection[str] | None) -> bool:
    """`entry`'s name is in `exclude`; without `exclude`, the tensor has ≤ 1 dimension (biases, norm layers)."""
    name, tensor = entry if isinstance(entry, tuple) else (None, entry)
    if exclude is None:
        return tensor.ndim <= 1
    if name is None:
        raise ValueError("exclude: parameter names need (name, tensor) pairs, got a bare tensor")
    return name in exclude


def split_1d_groups(groups: list[dict[str, Any]], exclude_1d: bool, trust_ratio: bool = True,
                    exclude: Collection[str] | None = None) -> list[dict[str, Any]]:
    """Move the excluded tensors to groups without weight decay: those named in `exclude` (see
    `optim.exclusions.excluded_names`), or without it those with ≤ 1 dimension (biases, norm layers).

    `trust_ratio`: the optimizer has a trust ratio, which those groups switch off (`adapt=False`) and the others
    state (`adapt=True`). A group that already states `adapt` was split by the caller and is kept as given.
    Entries are tensors or (name, tensor) pairs and stay as given.
    """
    if not exclude_1d:
        return groups
    out = []
    for group in groups:
        if trust_ratio and "adapt" in group:
            out.append(group)
            continue
        kept = [e for e in group["params"] if not _is_excluded(e, exclude)]
        excluded = [e for e in group["params"] if _is_excluded(e, exclude)]
        if kept:
            out.append({**group, "params": kept, **({"adapt": True} if trust_ratio else {})})
        if excluded:
            extra = {"adapt": False} if trust_ratio else {}
            out.append({**group, "params": excluded, "weight_decay": 0.0, **extra})
    return out


def chunk_budget(device: torch.device, element_size: int) -> int | None:
    """Elements per multi-tensor chunk so one chunk's few streams stay in cache; None: no chunking.

    Hand-written because torch's foreach kernels stream every tensor from memory per op; the
    trust-ratio step runs ~8 ops per tensor, and running them chunk by chunk keeps the data in cache
    (the same idea as timm's `_foreach_chunked`, which only chunks on CUDA).
    """
    override = os.environ.get("OPTIM_FOREACH_CHUNK")
    if override is not None:
        return int(override) or None
    if device.type == "cuda":
        l2 = torch.cuda.get_device_properties(device).L2_cache_size
        budget = l2 // (4 * element_size)
        return budget if budget >= 2**22 else None
    if device.type == "cpu":
        return (1 << 20) // element_size  # ~1 MiB per stream: a chunk's streams stay in L2/L3 (optim.bench)
    return None


def chunks(params: list[Tensor], budget: int | None) -> Iterator[list[int]]:
    """Consecutive index chunks with total numel ≤ budget (a larger tensor is a chunk of its own)."""
    if budget is None:
        yield list(range(len(params)))
        return
    current: list[int] = []
    total = 0
    for i, p in enumerate(params):
        if current and total + p.numel() > budget:
            yield current
            current, total = [], 0
        current.append(i)
        total += p.numel()
    if current:
        yield current


def decayed_gradients(grads: list[Tensor], params: list[Tensor], weight_decay: float) -> list[Tensor]:
    """d = g + wd·w in new tensors (one multi-tensor op), p.grad untouched; the gradients themselves when wd = 0."""
    if weight_decay == 0:
        return grads
    return torch._foreach_add(grads, params, alpha=weight_decay)


NORM_TILE_BYTES = 1 << 20  # a tile of a layer stays in cache while it is worked on (tiled_norms, LAMB's tiles)
# Where ‖g‖² + 2wd⟨g,w⟩ + wd²‖w‖² falls below 1/CANCELLATION_LIMIT of its terms' magnitudes, the sum's rounding
# error, relative to ‖d‖², would exceed that many times a dot product's: such a layer takes ‖d‖ from d itself.
CANCELLATION_LIMIT = 4.0


@dataclass
class LayerNorms:
    """Per-tensor L2 norms of one chunk: of the weights, of d = g + wd·w and of the raw gradients (None when
    not asked for)."""

    w: Tensor
    d: Tensor | None
    g: Tensor | None


def memory_order_view(t: Tensor) -> Tensor | None:
    """A 1-D view of `t`'s elements in memory order (no copy): of a contiguous or a channels_last tensor, else None."""
    if t.is_contiguous():
        return t.view(-1)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):  # one dense block from its offset
        return t.as_strided((t.numel(),), (1,))  # ~1 µs; permute(0, 2, 3, 1).view(-1) ~1.9 µs
    return None


def flat_views(*lists: list[Tensor]) -> list[list[Tensor]] | None:
    """Each list's tensors as `memory_order_view`s, or None unless every tensor has one and the tensors at each
    position share dtype and layout (so that element i of one view matches element i of the others)."""
    views = [[memory_order_view(t) for t in tensors] for tensors in lists]
    for i, first in enumerate(lists[0]):
        layout = first.stride(), first.dtype
        if any(v[i] is None or (t[i].stride(), t[i].dtype) != layout for t, v in zip(lists, views)):
            return None
    return views


def tiled_norms(grads: list[Tensor], params: list[Tensor], weight_decay: float, want_d: bool,
                want_g: bool) -> LayerNorms:
    """‖w‖ and, as asked, ‖d‖ (d = g + wd·w) and ‖g‖ per tensor, of 1-D tensors on the CPU (`flat_views`), from dot
    products over cache-sized tiles of w and g read once, d never written: ‖d‖² = ‖g‖² + 2wd⟨g,w⟩ + wd²‖w‖²
    (`decayed_squares`), so ‖g‖ costs nothing more.

    Writing d costs a pass over a buffer the size of the weights, which the update then reads back from memory: on
    ResNet-18's contiguous weights (AMD EPYC, one thread, thread CPU time, 12 rounds interleaved) LARS's eager step
    took 15.9 ms writing d in tiles and 14.9 ms with these dot products instead (telemetry on: 18.0 → 14.6 ms).
    Tiled because each tile costs a few op dispatches and larger tiles stay in cache on that machine (1 MiB of L2
    a core, 32 MiB of L3): the earlier pass writing d took 14.23 ms [IQR 13.77, 15.06] in tiles of 256 KiB, 12.66
    in 512 KiB, 11.59 [11.21, 12.56] in 1 MiB, 11.40 in 2 MiB, 11.45 in 4 MiB (one thread, 40 rounds interleaved).
    """
    tile = max(1, NORM_TILE_BYTES // params[0].element_size())
    take_gw = want_d and weight_decay != 0
    take_g = want_g or want_d
    dots, layer_of = [], []
    for layer, (g, p) in enumerate(zip(grads, params)):
        for start in range(0, p.numel(), tile):
            g_t, p_t = g[start:start + tile], p[start:start + tile]
            dots.append(torch.dot(p_t, p_t))
            if take_g:
                dots.append(torch.dot(g_t, g_t))
            if take_gw:
                dots.append(torch.dot(g_t, p_t))
            layer_of.append(layer)
    rows = torch.stack(dots).view(len(layer_of), -1)
    sums = rows.new_zeros(len(params), rows.shape[1]).index_add_(0, torch.tensor(layer_of), rows).unbind(1)
    ww, gg = sums[0], sums[1] if take_g else None
    dd = decayed_squares(grads, params, weight_decay, ww, gg, sums[2]) if take_gw else gg
    return LayerNorms(ww.sqrt(), dd.sqrt() if want_d else None, gg.sqrt() if want_g else None)


def decayed_squares(grads: list[Tensor], params: list[Tensor], weight_decay: float, ww: Tensor, gg: Tensor,
                    gw: Tensor) -> Tensor:
    """‖g + wd·w‖² per tensor from ‖w‖², ‖g‖² and ⟨g,w⟩; from d itself where the sum cancels (`CANCELLATION_LIMIT`).

    Elsewhere its rounding error is at most CANCELLATION_LIMIT times a dot product's, relative to ‖d‖²; layers
    whose gradients are orthogonal to their weights (every convolution before a BatchNorm) do not cancel at all.
    """
    wd = weight_decay
    dd = gg + 2 * wd * gw + wd * wd * ww
    magnitude = gg + 2 * wd * gw.abs() + wd * wd * ww
    for i in (dd * CANCELLATION_LIMIT < magnitude).nonzero().flatten().tolist():
        d = torch.add(grads[i], params[i], alpha=wd)
        dd[i] = torch.dot(d, d)
    return dd


# E[ρ²] − E[ρ]² cancels: a difference within this many units of E[ρ²]'s last place is rounding, not spread. One step
# in it is exactly 0, and its rounding (up to 1.4e-16 of E[ρ²] in float64) made the adaptive bounds of the next step
# ±3.5e-8·ρ wide, moving with the norms' summation order: tiled and untiled LAMB ended 3.7e-10 apart on an AMD EPYC
# after 6 steps (tests/test_tiled_lamb.py), 7.3e-16 apart with this floor.
SPREAD_ROUNDING_ULPS = 4.0


def spread(second: Tensor, mean: Tensor) -> Tensor:
    """The standard deviation √(E[x²] − E[x]²) from the two moments, 0 where the difference is rounding
    (`SPREAD_ROUNDING_ULPS`)."""
    variance = second - mean * mean
    floor = SPREAD_ROUNDING_ULPS * torch.finfo(variance.dtype).eps * second
    return torch.where(variance > floor, variance, torch.zeros_like(variance)).sqrt()


def safe_trust_ratio(numerator: Tensor, w_norm: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator, or 1 where ‖w‖ or the denominator is 0 (vectorised over layers)."""
    ratio = numerator / denominator
    return torch.where((w_norm > 0) & (denominator > 0), ratio, torch.ones_like(ratio))


CPU_DOT_DTYPES = (torch.float32, torch.float64)  # the dtypes whose norms the CPU takes through BLAS dot


def stack_norms(tensors: list[Tensor]) -> Tensor:
    """L2 norm of each tensor, stacked into one vector.

    On the CPU √(x·x) through BLAS dot is ~1.7× faster than linalg.vector_norm (99 vs 168 µs for a
    2.4M-element layer here), over each tensor's memory-order view (`reshape` would copy a channels_last one);
    elsewhere one foreach_norm launch beats a loop.
    """
    if tensors[0].device.type == "cpu" and tensors[0].dtype in CPU_DOT_DTYPES:
        flat = [view if (view := memory_order_view(t)) is not None else t.reshape(-1) for t in tensors]
        return torch.stack([torch.dot(f, f) for f in flat]).sqrt()
    return torch.stack(torch._foreach_norm(tensors))


# `fused=None` (the default) runs a CPU group's step as `optim.fused`'s compiled passes once the group has taken
# this many steps × elements (`fuse_step`): the eager time fusing would have saved by then (~1 ns per element and
# step: ResNet-18's LAMB step 39.5 → 28.4 ms, optim.bench on the 2-core Intel CI machine) pays for one compile (~10 s:
# 7–11 s with Inductor's on-disk cache cold, ~1–3 s warm) — rent until renting has cost the price of buying, then
# buy: never more than twice the best choice in hindsight. A CIFAR ResNet-18 (11.2 M adapted weights) fuses LAMB at
# step 896, ImageNet's ResNet-50 at 393; a CIFAR ResNet-8 (77 K) at 129,266, never in practice: its step is too
# small to repay a compile (a 20-epoch trial fused at a fixed 500th step spent 6.3 s compiling to save ~0.01 s an
# epoch). Each optimizer class may save another amount per element (`fuse_after_element_steps`: LARS's).
# Counted in steps, not seconds, so the step where a run fuses is the same on every run of it.
# On CUDA fusing is opt-in (`fused=True`): unmeasured there, and Triton compiles every layer's kernels.
FUSE_AFTER_ELEMENT_STEPS = 10**10


def fuse_step(numel: int, element_steps: int = FUSE_AFTER_ELEMENT_STEPS) -> int:
    """The first step a CPU group of `numel` elements takes fused under `fused=None`, fusing after `element_steps`."""
    return -(-element_steps // max(numel, 1))


class LayerwiseOptimizer(Optimizer):
    """Base of LARS/LAMB-style optimizers; subclasses implement `_update_chunk`.

    Group options shared by all: `adapt` (trust ratio on/off, False for excluded tensors when `exclude_1d`),
    `clip_lower`/`clip_upper` (fixed bounds μ ≤ ρ ≤ τ, None = unbounded), `clip_mode` ("fixed" or
    "adaptive": per-layer bounds EMA-mean ± clip_k·EMA-std of that layer's own ρ, decay clip_beta,
    intersected with the fixed bounds), `step` (t, completed optimizer steps, saved in state_dict) and
    `fused` (True: every step as `optim.fused`'s compiled passes; False: eager ops, nothing compiled; None: eager,
    then fused from `fuse_step` on the CPU, staying eager with a warning if compiling fails). Groups
    without a trust ratio, and variants without a fused form (LARS without momentum), always run eagerly.
    Every hyperparameter in `defaults` is checked by `optim.checks.CHECKS` before anything is built.
    """

    fuse_after_element_steps = FUSE_AFTER_ELEMENT_STEPS  # when `fused=None` fuses a CPU group (`fuse_step`)

    def __init__(self, params: ParamsLike, defaults: dict[str, Any], exclude_1d: bool = True):
        check_hparams({**defaults, "exclude_1d": exclude_1d})
        groups, names = normalize_params(params)
        groups = split_1d_groups(groups, exclude_1d)
        defaults = {"adapt": True, **CLIP_DEFAULTS, "step": 0, **defaults}
        defer_dynamo_import()
        super().__init__(groups, defaults)
        self.exclude_1d = exclude_1d
        self._names = names
        self.telemetry: TrustRatioTelemetry | None = None
        self._pending: list[Tensor] = []
        self._fuse_failed = False

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Also `load_state_dict`'s path: a state saved before `fused` existed steps as the default does."""
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("fused", None)

    # ---- telemetry -------------------------------------------------------------------------------
    def adapted_layer_names(self) -> list[str]:
        """Names of the layers that get a trust ratio, in the order telemetry rows use."""
        names, index = [], 0
        for group in self.param_groups:
            for p in group["params"]:
                if group["adapt"]:
                    names.append(self._names.get(id(p), f"param{index}"))
                index += 1
        return names

    def enable_telemetry(self, every: int = 1) -> TrustRatioTelemetry:
        """Start recording ρ, ‖w‖, ‖g‖ of every adapted layer every `every` steps; returns the recorder."""
        self.telemetry = TrustRatioTelemetry(self.adapted_layer_names(), every)
        return self.telemetry

    def disable_telemetry(self) -> None:
        self.telemetry = None

    def _recording(self, group: dict[str, Any]) -> bool:
        return self.telemetry is not None and self.telemetry.wants(group["step"])

    def _record(self, group: dict[str, Any], rho: Tensor, w_norm: Tensor, g_norm: Tensor) -> None:
        if self._recording(group):
            self._pending.append(torch.stack([rho, w_norm, g_norm], dim=1))

    # ---- clipping --------------------------------------------------------------------------------
    def _clip(self, group: dict[str, Any], params: list[Tensor], rho: Tensor) -> Tensor:
        """Apply adaptive (if enabled) then fixed bounds to the per-layer ratios ρ."""
        if group["clip_mode"] == "adaptive":
            rho = self._adaptive_clip(group, params, rho)
        lower, upper = group["clip_lower"], group["clip_upper"]
        if lower is not None or upper is not None:
            rho = rho.clamp(min=lower, max=upper)
        return rho

    def _adaptive_clip(self, group: dict[str, Any], params: list[Tensor], rho: Tensor) -> Tensor:
        stats_list = []
        for p in params:
            state = self.state[p]
            if "trust_stats" not in state:  # EMA of ρ and ρ² for this layer
                state["trust_stats"] = torch.zeros(2, dtype=rho.dtype, device=rho.device)
            stats_list.append(state["trust_stats"])
        stats = torch.stack(stats_list)
        t, beta, k = group["step"], group["clip_beta"], group["clip_k"]
        clipped = rho
        if t > 0:
            correction = 1.0 - beta**t
            mean, second = stats[:, 0] / correction, stats[:, 1] / correction
            std = spread(second, mean)
            clipped = torch.minimum(torch.maximum(rho, mean - k * std), mean + k * std)
        stats.lerp_(torch.stack([rho, rho * rho], dim=1), 1.0 - beta)
        torch._foreach_copy_(stats_list, list(stats.unbind(0)))
        return clipped

    # ---- the step --------------------------------------------------------------------------------
    def _update_chunk(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        raise NotImplementedError

    def _fusable(self, group: dict[str, Any]) -> bool:
        """Whether this group's settings have a fused form (`_update_fused`)."""
        return False

    def _update_fused(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        raise NotImplementedError

    def _fuses(self, group: dict[str, Any], params: list[Tensor]) -> bool:
        """Whether this group's step runs fused now (see `fused` in the class docstring)."""
        setting = group["fused"]
        if setting is False or self._fuse_failed or not group["adapt"] or not self._fusable(group):
            return False
        if setting:
            return True
        return params[0].device.type == "cpu" and group["step"] >= self.fuse_step_of(group)

    def fuse_step_of(self, group: dict[str, Any]) -> int:
        """The first step this group takes fused under `fused=None` on the CPU."""
        return fuse_step(sum(p.numel() for p in group["params"]), self.fuse_after_element_steps)

    def _fused_step(self, group: dict[str, Any], params: list[Tensor]) -> bool:
        """Run the group's step fused; False (nothing changed, a warning given) if `fused=None` and it cannot compile."""
        from optim import fused  # imports torch._dynamo (~1 s): only runs that fuse pay it

        pending = len(self._pending)
        # the adaptive clip's EMAs advance between the two passes: put back if the second cannot compile
        stats = {p: self.state[p]["trust_stats"].clone() for p in params if "trust_stats" in self.state[p]}
        try:
            with fused.compiling():
                self._update_fused(group, params, [p.grad for p in params])
        except fused.COMPILE_ERRORS as error:
            if group["fused"]:
                raise
            del self._pending[pending:]
            for p in params:
                if p in stats:
                    self.state[p]["trust_stats"] = stats[p]
                else:
                    self.state[p].pop("trust_stats", None)
            self._fuse_failed = True
            warnings.warn(f"{type(self).__name__}: could not compile the fused step, stepping eagerly: "
                          f"{str(error).strip().splitlines()[0][:300]}", RuntimeWarning, stacklevel=3)
            return False
        return True

    def _before_group(self, group: dict[str, Any], params: list[Tensor]) -> None:
        """Hook run once per group before its chunks (e.g. bias corrections)."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        record_step, present, position = None, [], 0
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if self._recording(group) and group["adapt"]:
                record_step = group["step"]
                present += [position + i for i, p in enumerate(group["params"]) if p.grad is not None]
            if group["adapt"]:
                position += len(group["params"])
            if params:
                if any(p.grad.is_sparse for p in params):
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                self._before_group(group, params)
                if not (self._fuses(group, params) and self._fused_step(group, params)):
                    budget = chunk_budget(params[0].device, params[0].element_size())
                    for idx in chunks(params, budget):
                        chunk = [params[i] for i in idx]
                        self._update_chunk(group, chunk, [p.grad for p in chunk])
            group["step"] += 1
        if self._pending and record_step is not None:
            rows = torch.cat(self._pending)
            if len(present) != position:  # layers without a gradient this step are recorded as NaN
                full = rows.new_full((position, 3), float("nan"))
                full[torch.tensor(present, device=rows.device)] = rows
                rows = full
            self.telemetry.record(record_step, rows)
        self._pending = []
        return loss
