"""LARC (NVIDIA apex, clip mode): LARS with ρ replaced by min(ρ/lr, 1)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from optim.lars import LARS


class LARC(LARS):
    """LARS whose effective step lr·ρ never exceeds lr: ρ ← min(ρ/lr, 1)."""

    def _scale_ratio(self, group: dict[str, Any], rho: Tensor) -> Tensor:
        return (rho / group["lr"]).clamp(max=1.0)
