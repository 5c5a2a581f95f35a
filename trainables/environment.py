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
    # Trials keep 2 checkpoints (`CheckpointConfig(num_to_keep=2)`) and checkpoint every epoch, so Tune forces a
    # snapshot of the study's state after each — by design (a killed driver loses nothing) — and, with epochs under
    # 5 s, warned about it after each one (5 warnings in one 20-epoch trial of 0.6-s epochs).
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # A report downloads every trial's telemetry: one progress bar per trial is noise.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # The local Ray starts no idle "default" workers for the first driver: every task and actor of a study carries
    # a runtime_env (Tune's trial actors their own env_vars, all of them `WORKER_ENV`), so none could use them.
    # Measured on 2 cores, a 4-trial 1-epoch demo study, interleaved: time to the first trial 12.4 s -> 11.9 s (4 rounds).
    "RAY_prestart_worker_first_driver": "0",
    # Ray Train's controller polls its workers every 2 s by default and sees a run's end, or its start's progress,
    # only at a poll: a multi-worker trial (TorchTrainer) waited up to 2 s after its loop ended. One-worker
    # TorchTrainer runs of 2 epochs on 2 cores, from the loop's end to fit()'s return: 4.0 and 3.6 s at 2 s, 2.0
    # and 1.5 s at 0.5 s; from fit() to the loop's start 10.0 and 10.0 s against 9.5 and 8.7 s. Tune hands it to its
    # trial actors and Train to its controller (both propagate it).
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}


# The environment of Ray's worker processes (trials, Ray Train workers), given to them through the runtime_env of
# the Ray this platform starts or joins, so Ray's own daemons keep glibc's defaults.
WORKER_ENV = {
    # One glibc malloc arena (read at the process's start). Tune runs a trial's loop in a thread, and a thread's
    # arena serves large tensors from 64 MiB sub-heaps that fault their pages in again; with
    # `optim.allocator.keep_freed_memory` alone a one-worker trial still trained 1.118x slower than the same loop
    # in a main thread (trainables.bench, IQR [1.082, 1.161], 5 rounds), with this 1.035x (IQR [1.010, 1.035],
    # 3 rounds). Set in Ray's daemons too (as first built) it cost ~1.3 s of the local Ray's start.
    MALLOC_ARENA_ENV: "1",
}


def worker_env() -> dict[str, str]:
    """`WORKER_ENV`, where this process's environment does not set the variable itself (the user's value wins)."""
    return {key: os.environ.get(key, value) for key, value in WORKER_ENV.items()}


def with_worker_env(runtime_env: dict | None) -> dict:
    """`runtime_env` with `worker_env()` under its env_vars (its own env_vars win)."""
    runtime_env = dict(runtime_env or {})
    runtime_env["env_vars"] = worker_env() | runtime_env.get("env_vars", {})
    return runtime_env


def set_library_defaults() -> None:
    """Put `LIBRARY_DEFAULTS` into this process's environment (and so its local Ray's), where not set."""
    for key, value in LIBRARY_DEFAULTS.items():
        os.environ.setdefault(key, value)
