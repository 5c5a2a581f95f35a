"""CLARS (Complete Layer-wise Adaptive Rate Scaling): LARS whose trust-ratio denominator uses the mean
of per-sample layer gradient norms, (1/B)·Σᵢ‖∇_l fᵢ‖ + wd‖w‖, instead of the norm of the mean gradient.

Training-loop API: after `loss.backward()` (which gives the mean gradient as usual), compute the
per-sample norms and hand them to the optimizer before `step()`:

    norms = per_sample_grad_norms(model, loss_fn, inputs, targets)   # exact, torch.func vmap + grad
    optimizer.set_per_sample_grad_norms(model.parameters(), norms)
    optimizer.step()

Under data parallelism, average `norms` over workers (all_reduce of the per-worker means at equal
per-worker batch) so the denominator is the mean over the global batch. `microbatch_grad_norms`
is a cheaper, named approximation (mean of micro-batch gradient norms; exact at micro-batch size 1).

Batch norm: a "per-sample gradient" is the gradient of sample i's loss with the sample as its own batch
(its own BN statistics), which is what a loop of single-sample backward passes computes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from optim.lars import LARS
from optim.layerwise import LayerNorms, safe_trust_ratio

LossFn = Callable[[Tensor, Tensor], Tensor]


@contextlib.contextmanager
def _per_sample_batchnorm(model: nn.Module) -> Iterator[None]:
    """Batch-norm layers normalise with the current batch's statistics and leave running stats untouched."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.track_running_stats for m in norms]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, flag in zip(norms, saved):
            m.track_running_stats = flag


def _trainable(model: nn.Module) -> dict[str, Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def per_sample_grad_norms(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor,
                          chunk_size: int = 32) -> list[Tensor]:
    """Exact (1/B)·Σᵢ‖∇_p fᵢ‖ for every trainable parameter p of `model` (order of `model.parameters()`).

    Per-sample gradients come from torch.func (vmap over grad), `chunk_size` samples at a time so
    memory stays at chunk_size × parameters. `loss_fn(outputs, targets)` must average over its batch.
    """
    params = {n: p.detach() for n, p in _trainable(model).items()}
    buffers = dict(model.named_buffers())

    def sample_loss(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return loss_fn(functional_call(model, (p, buffers), (x.unsqueeze(0),)), y.unsqueeze(0))

    per_sample_grads = vmap(grad(sample_loss), in_dims=(None, 0, 0), randomness="different")
    sums = {n: torch.zeros((), dtype=p.dtype, device=p.device) for n, p in params.items()}
    batch = inputs.shape[0]
    with _per_sample_batchnorm(model):
        for start in range(0, batch, chunk_size):
            grads = per_sample_grads(params, inputs[start:start + chunk_size], targets[start:start + chunk_size])
            for n, g in grads.items():
                sums[n] += torch.linalg.vector_norm(g.flatten(1), dim=1).sum()
    return [s / batch for s in sums.values()]


def microbatch_grad_norms(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor,
                         num_microbatches: int) -> list[Tensor]:
    """Approximation of `per_sample_grad_norms`: mean over micro-batches of the micro-batch gradient norm.

    Exact when every micro-batch holds one sample; smaller otherwise (averaging within a micro-batch
    cancels part of the per-sample variation). Costs one backward pass per micro-batch.
    """
    if not 1 <= num_microbatches <= inputs.shape[0]:
        raise ValueError(f"num_microbatches: must be in [1, batch={inputs.shape[0]}], got {num_microbatches}")
    params = list(_trainable(model).values())
    sums = [torch.zeros((), dtype=p.dtype, device=p.device) for p in params]
    for x, y in zip(inputs.chunk(num_microbatches), targets.chunk(num_microbatches)):
        grads = torch.autograd.grad(loss_fn(model(x), y), params, allow_unused=True)
        for i, g in enumerate(grads):
            if g is not None:
                sums[i] += torch.linalg.vector_norm(g)
    return [s / num_microbatches for s in sums]


class CLARS(LARS):
    """LARS with the per-sample-norm denominator; call `set_per_sample_grad_norms` before every `step`."""

    def __init__(self, params, **kwargs: Any):
        super().__init__(params, **kwargs)
        self._sample_norms: dict[int, Tensor] = {}

    def set_per_sample_grad_norms(self, params: Iterable[Tensor], norms: Iterable[Tensor]) -> None:
        """Supply (1/B)·Σᵢ‖∇_p fᵢ‖ per parameter for the next step (e.g. from `per_sample_grad_norms`)."""
        params, norms = list(params), list(norms)
        if len(params) != len(norms):
            raise ValueError(f"set_per_sample_grad_norms: {len(params)} params but {len(norms)} norms")
        self._sample_norms = {id(p): n for p, n in zip(params, norms)}

    def _needs_decayed_norm(self, group: dict[str, Any]) -> bool:
        return False  # the denominator is the per-sample gradient norms' mean

    def _raw_ratio(self, group: dict[str, Any], params: list[Tensor], norms: LayerNorms) -> Tensor:
        missing = [i for i, p in enumerate(params) if id(p) not in self._sample_norms]
        if missing:
            raise RuntimeError(
                "CLARS.step(): no per-sample gradient norms for some layers; call "
                "optimizer.set_per_sample_grad_norms(model.parameters(), per_sample_grad_norms(...)) before step()")
        w_norm = norms.w
        sample_norm = torch.stack([self._sample_norms[id(p)].to(w_norm) for p in params])
        return safe_trust_ratio(group["eta"] * w_norm, w_norm, sample_norm + group["weight_decay"] * w_norm)

    @torch.no_grad()
    def step(self, closure=None):
        try:
            return super().step(closure)
        finally:
            self._sample_norms = {}  # norms belong to one batch; a stale set must never be reused
