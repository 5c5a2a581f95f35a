"""Shared fixtures: a small conv net with fixed data, and helpers to run optimizers side by side."""

from __future__ import annotations

import copy
import os
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn


def small_convnet(dtype: torch.dtype = torch.float64, batchnorm: bool = True) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, padding=1)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(8))
    layers += [nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
               nn.Flatten(), nn.Linear(32, 10)]
    return nn.Sequential(*layers).to(dtype)


def batch(n: int = 16, dtype: torch.dtype = torch.float64, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=gen, dtype=dtype), torch.randint(0, 10, (n,), generator=gen)


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, before_step: Callable[[int], None] | None = None,
          dtype: torch.dtype = torch.float64) -> list[float]:
    """Run `steps` full-batch steps on fixed data (a new batch per step, on the model's device); returns the
    losses."""
    losses, device = [], next(model.parameters()).device
    for i in range(steps):
        x, y = (t.to(device) for t in batch(dtype=dtype, seed=i))
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if before_step is not None:
            before_step(i)
        opt.step()
        losses.append(loss.item())
    return losses


def max_rel_err(a: nn.Module, b: nn.Module) -> float:
    worst = 0.0
    for pa, pb in zip(a.parameters(), b.parameters()):
        worst = max(worst, ((pa - pb).norm() / pb.norm().clamp_min(1e-300)).item())
    return worst


@pytest.fixture
def twin_models() -> tuple[nn.Module, nn.Module]:
    model = small_convnet()
    return model, copy.deepcopy(model)


def _cifar10_dir():
    """The real CIFAR-10 parquet files: $LAYERWISE_CIFAR10, ../shared/data/cifar10 beside the repo, or /work/shared."""
    import os
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    for candidate in (os.environ.get("LAYERWISE_CIFAR10"), repo.parent / "shared/data/cifar10",
                      Path("/work/shared/data/cifar10")):
        if candidate and (Path(candidate) / "train.parquet").is_file():
            return str(candidate)
    return None


@pytest.fixture(scope="session")
def cifar10_dir() -> str:
    path = _cifar10_dir()
    if path is None:
        pytest.skip("real CIFAR-10 parquet not found (set LAYERWISE_CIFAR10 to its folder)")
    return path


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory) -> str:
    """A per-session cache (decoded datasets, the empty MLflow store), so tests never depend on (or write to) the
    user's cache."""
    import os

    path = str(tmp_path_factory.mktemp("decode-cache"))
    os.environ["LAYERWISE_CACHE"] = path
    return path


# --- no process outlives its test module --------------------------------------------------------------
# Every child of this pytest run inherits this variable, including daemons that `ray start` detaches
# from their parent, so what a test module started can be found afterwards whoever its parent is now.
RUN_MARKER = "LAYERWISE_TEST_RUN"
os.environ[RUN_MARKER] = uuid.uuid4().hex
LEFTOVER_GRACE_S = 60  # Ray's workers exit a few seconds after their raylet


def _marked_processes() -> dict[int, str]:
    """pid → command line of every live process (but this one) started from this pytest run."""
    import psutil

    found = {}
    for proc in psutil.process_iter(["pid", "status"]):
        if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if proc.environ().get(RUN_MARKER) == os.environ[RUN_MARKER]:
                found[proc.pid] = " ".join(proc.cmdline())[:200]
        except (psutil.Error, OSError):  # exited meanwhile, or not ours to read
            continue
    return found


@pytest.fixture(scope="module", autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Fail the module (and kill the rest) if a process it started — Ray, a server, a browser — outlives it."""
    import psutil

    before = set(_marked_processes())
    yield
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while (left := {p: c for p, c in _marked_processes().items() if p not in before}) and time.monotonic() < deadline:
        time.sleep(1)
    if left:
        for pid in left:
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
        pytest.fail(f"{len(left)} process(es) outlived the test module by {LEFTOVER_GRACE_S} s (killed now):\n"
                    + "\n".join(f"  {pid}: {cmd}" for pid, cmd in sorted(left.items())))
