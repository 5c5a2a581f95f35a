"""The optimizer settings every space picks from, each written once; a space adds its batch sizes and ranges."""

from __future__ import annotations

from search_spaces.spec import Family, Float

_LARS = {"momentum": 0.9, "weight_decay": 5e-4}  # LARS, TVLARS, LARC, CLARS
_LAMB = {"weight_decay": 5e-4}  # LAMB, LAMBC

TVLARS = Family("tvlars", "TVLARS (no warm-up; φ(t) ramps the trust ratio)",
                {"optimizer": "tvlars", "scheduler": "none", **_LARS})
LARS_WARMUP = Family("lars_warmup", "LARS with linear warm-up then cosine",
                     {"optimizer": "lars", "scheduler": "warmup_cosine", **_LARS})
LARS_NOWARMUP = Family("lars_nowarmup", "LARS without warm-up, polynomial decay",
                       {"optimizer": "lars", "scheduler": "poly", **_LARS})
LAMB_WARMUP = Family("lamb_warmup", "LAMB with linear warm-up then cosine",
                     {"optimizer": "lamb", "scheduler": "warmup_cosine", **_LAMB})
LAMB_NOWARMUP = Family("lamb_nowarmup", "LAMB without warm-up, polynomial decay",
                       {"optimizer": "lamb", "scheduler": "poly", **_LAMB})
# The LAMBC paper clips the trust ratio to [0, τ] and compares τ = 1, 3, 5, 10 (1 best): μ = 0 is fixed and τ
# is searched over a range bracketing them (a searched μ pinned every layer's ratio at 6.9 in an earlier
# result: another optimizer). A two-sided bound stays one flag away: `--set clip_lower=0.5`.
LAMBC_PAPER_UPPER = (0.5, 20.0)
LAMBC = Family("lambc", "LAMBC: LAMB with the trust ratio clipped to [0, τ] (the paper's)",
               {"optimizer": "lambc", "scheduler": "warmup_cosine", "clip_lower": 0.0, **_LAMB},
               (Float("clip_upper", *LAMBC_PAPER_UPPER, log=True),))
LARC = Family("larc", "LARC: LARS with the local lr clipped at the global lr",
              {"optimizer": "larc", "scheduler": "warmup_cosine", **_LARS})
CLARS = Family("clars", "CLARS: per-sample gradient norms in the trust ratio, no warm-up",
               {"optimizer": "clars", "scheduler": "poly", **_LARS})
