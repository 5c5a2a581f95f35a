"""LAMBC (Fong et al., trust ratio clipping): LAMB with ρ clipped to [clip_lower, clip_upper].

The paper's best upper bound was 1, so that is the default; `clip_mode="adaptive"` selects the
paper's proposed future work, per-layer bounds from the running mean ± k·std of that layer's ρ.
"""

from __future__ import annotations

from optim.lamb import LAMB


class LAMBC(LAMB):
    """LAMB with trust-ratio clipping; defaults to the paper's ρ ≤ 1."""

    def __init__(self, params, clip_lower: float | None = None, clip_upper: float | None = 1.0, **kwargs):
        super().__init__(params, clip_lower=clip_lower, clip_upper=clip_upper, **kwargs)
