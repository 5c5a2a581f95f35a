"""`python -m study.run` with two test spaces registered, as a user registers their own spaces
(`search_spaces.SPACES[name] = SearchSpace(...)`) before calling `study.run.main`.

`sequential_e2e`: three LAMB variants at one batch, nothing searched. LAMB + warm-up at lr 0.01 against
LAMB without warm-up at lr 1e-4 (100× smaller: it barely trains in 2 epochs): a gap the first seeds decide;
LAMBC with τ = 10⁶ (its clip never binds: exactly LAMB's steps, seed for seed) against LAMB + warm-up: no
true gap, so that comparison stays open until its bound or ends "no practical difference".
"""

from __future__ import annotations

import dataclasses
import sys

import search_spaces
from search_spaces.demo import DEMO
from search_spaces.families import LAMB_NOWARMUP, LAMB_WARMUP, LAMBC
from search_spaces.spec import Variant
from study.run import main

LR, WARMUP = 0.01, 0.5
SEQUENTIAL_E2E = dataclasses.replace(
    DEMO, name="sequential_e2e", description="test: one decided comparison and one without a true gap",
    fixed={**DEMO.fixed, "limit": 1200, "val_size": 200, "test_limit": 400, "batch_size": 100, "epochs": 2,
           "eval_every": 1},
    variants={"lamb_warmup": Variant({**LAMB_WARMUP.fixed, "lr": LR, "warmup_epochs": WARMUP}),
              "lamb_nowarmup": Variant({**LAMB_NOWARMUP.fixed, "lr": LR / 100}),
              "lambc": Variant({**LAMBC.fixed, "lr": LR, "warmup_epochs": WARMUP, "clip_upper": 1e6})},
    num_samples=1, grace_period=1, confirm=1, seeds=3, max_seeds=5, seed_step=2)
search_spaces.SPACES[SEQUENTIAL_E2E.name] = SEQUENTIAL_E2E

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
