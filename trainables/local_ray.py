"""The local Ray this platform starts (`init_local_ray`): enough logical CPUs that a Train controller, its workers
and (under Tune) the trial driver never wait on each other, workers at nice 0, and nothing imported while it starts
(`import_ray_start`). Light on purpose (no Ray Train): a study starts its Ray before importing the rest."""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import shlex
import signal
import sys
from collections.abc import Iterator
from typing import Any

import ray

from trainables.environment import with_worker_env


def local_cpu_slots(num_workers: int, cpus_per_worker: float = 1.0) -> int:
    """Logical CPUs for a local Ray: the machine's cores, but never fewer than the run needs plus headroom.

    Logical CPUs are scheduling tokens, not threads: on a 2-core machine Ray must still be able to
    place the Train controller, every worker and a Tune trial driver at once, or it stalls.
    """
    return max(os.cpu_count() or 1, math.ceil(num_workers * cpus_per_worker) + 4, 8)


# What a local Ray's start (`ray.init`) imports on first use, in Ray 2.60 (read with `python -X importtime`): the
# dashboard's optional dependencies (aiohttp, gRPC's asyncio API, OpenTelemetry's Prometheus exporter), the
# autoscaler's schema, the uv runtime-env hook, the usage-stats recorder and the NVML bindings; ~0.2 s here.
# `import_ray_start` loads them first, so that the start itself imports nothing and another thread may import
# meanwhile: two threads importing modules that import each other can meet a partly initialised one (MLflow shares
# OpenTelemetry with Ray's start). tests/test_ray_start.py fails, naming the module, when a Ray upgrade adds one.
RAY_START_MODULES = ("ray.dashboard.optional_deps", "ray.autoscaler.v2.utils",
                     "ray._private.runtime_env.uv_runtime_env_hook", "ray._common.usage.usage_lib",
                     "ray._private.thirdparty.pynvml")


def import_ray_start() -> None:
    """Import what `init_local_ray` would import (`RAY_START_MODULES`), so that it imports nothing."""
    for name in RAY_START_MODULES:
        importlib.import_module(name)


WORKER_NICENESS_ENV = "RAY_worker_niceness"  # Ray's config variable for its workers' nice value


def init_local_ray(num_cpus: int | None = None, dashboard: bool = True, **kwargs: Any) -> None:
    """Start (once) a local Ray for this process, unless one is already connected; `dashboard`: with Ray's
    dashboard (its UI and State API), else with the bare head Ray starts in its place."""
    if not ray.is_initialized():
        # The dashboard serves the State API, which Ray Train's PlacementGroupCleaner needs to free the
        # resources of a run whose controller was killed (e.g. a trial stopped by ASHA). Ray's start waits for
        # it and its 9 module processes to be up before it starts the raylet: ~2 s on 2 cores.
        # address="local": always a new local instance. Without it ray.init joins whatever
        # /tmp/ray/ray_current_cluster names (left by any earlier `ray start`, even a dead one) and then
        # refuses num_cpus with a ValueError: the CI flake of a study exiting 2 before its Ray started.
        # Ray starts workers at nice 15 (worker_niceness) so its daemons stay responsive; on a machine the study
        # owns that starves the trials instead: measured on 2 cores (trainables.bench, ResNet-8 bs 512), a
        # one-worker Tune trial ran 1.256x slower than the bare loop (IQR [1.217, 1.311]) at nice 15 and 1.076x
        # (IQR [1.069, 1.090]) at nice 0. Only the local Ray this process starts; a user's setting wins.
        os.environ.setdefault(WORKER_NICENESS_ENV, "0")
        kwargs["runtime_env"] = with_quoted_interpreter(with_worker_env(kwargs.get("runtime_env")))
        with hang_ups_blocked():
            ray.init(address="local", num_cpus=num_cpus or local_cpu_slots(1), include_dashboard=dashboard,
                     dashboard_host="127.0.0.1", log_to_driver=False, **kwargs)


@contextlib.contextmanager
def hang_ups_blocked() -> Iterator[None]:
    """SIGHUP blocked in this thread meanwhile, and so in the processes it starts (`exec` keeps the signal mask): the
    local Ray's daemons, and the workers they start later — as Ray blocks SIGINT in them (ray/_private/services.py:
    `start_ray_process`, Ray 2.60).

    A closed terminal signals its whole foreground process group, where Ray starts its daemons; unblocked, the GCS
    and the raylet died with the terminal while the driver stopped the study (`study.signals.STOP_SIGNALS`): it hung
    ~60 s on the dead GCS, saved nothing and left its parent run RUNNING. They still end with the driver (Ray's
    fate-sharing). Blocked, not ignored: this process still gets a hang-up that comes meanwhile."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        yield
    finally:
        if signal.SIGHUP not in blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})


def with_quoted_interpreter(runtime_env: dict[str, Any] | None) -> dict[str, Any] | None:
    """`runtime_env`, naming this process's Python quoted (`py_executable`) when its path needs quoting.

    Ray 2.60 starts a worker that has a runtime_env (env_vars, py_modules, a Train worker's fault env) through
    `bash -c "exec <python> <args>"`, quoting the arguments but not the interpreter
    (ray/_private/runtime_env/context.py: exec_worker): from a checkout under a path with a space every such
    worker died with `bash: /tmp/sp: No such file or directory` and trials waited for actors that never
    started. Only for the local Ray this process starts, whose workers run this very interpreter.
    """
    quoted = shlex.quote(sys.executable)
    if quoted == sys.executable:
        return runtime_env
    return {**(runtime_env or {}), "py_executable": quoted}
