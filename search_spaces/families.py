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
LAMBC = Family("lambc", "LAMBC: LAMB with the trust ratio clipped to [μ, τ]",
               {"optimizer": "lambc", "scheduler": "warmup_cosine", **_LAMB},
               (Float("clip_upper", 0.1, 10.0, log=True),  # τ, then μ ≤ τ by construction
                Float("clip_lower", 1e-3, 10.0, log=True, at_most="clip_upper")))
LARC = Family("larc", "LARC: LARS with the local lr clipped at the global lr",
              {"optimizer": "larc", "scheduler": "warmup_cosine", **_LARS})
CLARS = Family("clars", "CLARS: per-sample gradient norms in the trust ratio, no warm-up",
               {"optimizer": "clars", "scheduler": "poly", **_LARS})
