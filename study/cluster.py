"""Can the Ray cluster ever place one trial, and how many trials fit at once? Decided before Tune starts.

A trial is `workers` Ray Train workers of `cpus_per_worker` CPUs and `gpus_per_worker` GPUs each;
Train packs them onto nodes, so a node holding k workers' resources takes k of them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from study.errors import InputError


@dataclass(frozen=True)
class TrialShape:
    """The resources of one trial."""

    workers: int
    cpus_per_worker: float
    gpus_per_worker: float

    def describe(self) -> str:
        each = [f"{self.cpus_per_worker:g} CPU"] + ([f"{self.gpus_per_worker:g} GPU"] if self.gpus_per_worker else [])
        return f"{self.workers} worker(s) × ({' + '.join(each)})"


def workers_on(node: Mapping[str, float], shape: TrialShape) -> int:
    """How many of the trial's workers one node's resources hold."""
    fits = [math.inf]
    if shape.cpus_per_worker:
        fits.append(node.get("CPU", 0.0) // shape.cpus_per_worker)
    if shape.gpus_per_worker:
        fits.append(node.get("GPU", 0.0) // shape.gpus_per_worker)
    return int(min(fits)) if min(fits) != math.inf else shape.workers


def trials_at_once(nodes: Sequence[Mapping[str, float]], shape: TrialShape) -> int:
    """How many trials the nodes hold at the same time (0: not even one)."""
    return sum(workers_on(node, shape) for node in nodes) // shape.workers


def local_nodes(shape: TrialShape) -> list[dict[str, float]]:
    """This machine as a local Ray sees it: its cores (the local Ray is sized so one trial always fits;
    logical CPUs are scheduling slots there) and the GPUs torch can use."""
    import torch

    cores = float(os.cpu_count() or 1)
    return [{"CPU": max(cores, shape.workers * shape.cpus_per_worker), "GPU": float(torch.cuda.device_count())}]


def ray_nodes() -> list[dict[str, float]]:
    """The resources of every live node of the connected Ray cluster."""
    import ray

    return [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]


def _total(nodes: Sequence[Mapping[str, float]]) -> str:
    cpus, gpus = (sum(n.get(k, 0.0) for n in nodes) for k in ("CPU", "GPU"))
    return f"{len(nodes)} node(s), {cpus:g} CPU, {gpus:g} GPU in all"


def fit_trials(nodes: Sequence[Mapping[str, float]], shape: TrialShape, where: str, wait: bool = False) -> int:
    """Trials that fit at once (≥ 1); InputError naming the fixes when not even one trial ever fits."""
    fit = trials_at_once(nodes, shape)
    if fit >= 1 or wait:
        return max(fit, 1)
    lacking = "GPU" if shape.gpus_per_worker and all(workers_on({**n, "CPU": math.inf}, shape) == 0 for n in nodes) \
        else "resources"
    raise InputError(
        f"one trial needs {shape.describe()}, but {where} has {_total(nodes)}: no {lacking} for it. "
        f"Run on CPU with --set gpus_per_worker=0, use fewer workers with --set workers=N, "
        f"or join a cluster that has them with --address (--wait-for-resources if it autoscales)")


def smallest_store(nodes: Sequence[Mapping[str, float]]) -> int | None:
    """The smallest node's object store in bytes (None: unknown)."""
    stores = [int(n["object_store_memory"]) for n in nodes if n.get("object_store_memory")]
    return min(stores) if stores else None


def check_fits_object_store(nbytes: int, nodes: Sequence[Mapping[str, float]]) -> None:
    """A dataset decoded into memory must fit every node's object store, where each node keeps one copy for
    its trials: else one InputError naming the limit and the way out (streaming)."""
    store = smallest_store(nodes)
    if store is not None and nbytes > store:
        raise InputError(f"the decoded dataset ({nbytes / 2**30:.2f} GiB) does not fit Ray's object store "
                         f"({store / 2**30:.2f} GiB on the smallest node): give the nodes more "
                         f"(ray start --object-store-memory, or ray.init(object_store_memory=…)), train on "
                         f"less (--set limit=N), or stream it (--set data_path=stream; imagefolder and imagenet)")
