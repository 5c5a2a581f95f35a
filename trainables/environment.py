"""Settings of Ray Tune, MLflow and the local Ray's processes this platform relies on, set once by each entry point (`study.run`,
`reports.table`, `trainables.bench`) before the libraries read them — never as a side effect of an import.
Each is a default: a value the user set wins. (Ray Train V2, which the trials use, is Ray 2.60's default.)"""

from __future__ import annotations

import os

MALLOC_ARENA_ENV = "MALLOC_ARENA_MAX"

LIBRARY_DEFAULTS = {
    # Barlow Twins trials report test accuracy only in their linear-eval stage.
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    # Save the study's state often, so a killed driver loses at most seconds of trial bookkeeping.
    "TUNE_GLOBAL_CHECKPOINT_S": "2",
    # A report downloads every trial's telemetry: one progress bar per trial is noise.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # One glibc malloc arena in the local Ray's processes (read at their start; this process keeps its own).
    # Tune runs a trial's loop in a thread, and a thread's arena serves large tensors from 64 MiB sub-heaps
    # that fault their pages in again; with `optim.allocator.keep_freed_memory` alone a one-worker trial still
    # trained 1.118x slower than the same loop in a main thread (trainables.bench, IQR [1.082, 1.161], 5 rounds),
    # with this 1.035x (IQR [1.010, 1.035], 3 rounds).
    MALLOC_ARENA_ENV: "1",
}


def set_library_defaults() -> None:
    """Put `LIBRARY_DEFAULTS` into this process's environment (and so its local Ray's), where not set."""
    for key, value in LIBRARY_DEFAULTS.items():
        os.environ.setdefault(key, value)
