"""TVLARS (Revisiting LARS for large batch training): LARS with ρ scaled by a time-varying φ(t).

φ(t) = 1/(α + exp(λ(t − d_e))) + γ_min, t = completed optimizer steps. φ starts near 1/(α + e^{−λ d_e})
+ γ_min, decays through d_e and settles at γ_min, replacing warm-up; no LR scheduler is used with it.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from optim.checks import nonnegative, positive
from optim.lars import LARS


def tvlars_phi(t: float, lam: float, delay_steps: float, alpha: float = 1.0, gamma_min: float = 0.0) -> float:
    """φ(t) = 1/(α + e^{λ(t − d_e)}) + γ_min, without overflow for large λ(t − d_e)."""
    x = lam * (t - delay_steps)
    if x > 0:  # 1/(α + e^x) = e^{−x}/(α e^{−x} + 1); e^{−x} underflows to 0 instead of e^x to inf
        e = math.exp(-x)
        return e / (alpha * e + 1.0) + gamma_min
    return 1.0 / (alpha + math.exp(x)) + gamma_min


def delay_steps_from_epochs(delay_epochs: float, steps_per_epoch: int) -> int:
    """d_e in optimizer steps from a delay given in epochs."""
    nonnegative("delay_epochs", delay_epochs)
    positive("steps_per_epoch", steps_per_epoch)
    return int(round(delay_epochs * steps_per_epoch))


class TVLARS(LARS):
    """LARS with ρ·φ(t); hyperparameters `lam` (λ ≥ 0), `alpha` (α > 0), `delay_steps` (d_e), `gamma_min`."""

    def __init__(self, params, lam: float = 1e-3, alpha: float = 1.0, delay_steps: float = 0,
                 gamma_min: float = 0.0, **kwargs: Any):
        super().__init__(params, lam=lam, alpha=alpha, delay_steps=delay_steps, gamma_min=gamma_min, **kwargs)

    def phi(self, group: dict[str, Any] | None = None) -> float:
        """φ at the group's current step (the value the next `step()` uses)."""
        group = group or self.param_groups[0]
        return tvlars_phi(group["step"], group["lam"], group["delay_steps"], group["alpha"], group["gamma_min"])

    def _scale_ratio(self, group: dict[str, Any], rho: Tensor) -> Tensor:
        return rho * self.phi(group)
