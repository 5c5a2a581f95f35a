"""Micro-batching and BatchNorm groups: a step in micro-batches of m equals the whole-batch step at bn_group=m.

The real step (`classification.train_step`) on a small ResNet in fp32, for the layer-wise optimizers whose
trust ratios must see the accumulated, all-reduced gradient; on one process, and on two gloo processes
under DDP (`no_sync` on all but the last micro-batch), as Ray Train runs them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from subprocs import free_port

from trainables.batches import resolve_batching
from trainables.classification import train_step
from trainables.config import TrialConfig
from trainables.models import build_model
from trainables.worker import WorkerEnv, build_training, place_model

GLOBAL_BATCH, MICRO = 16, 4
OPTIMIZERS = {
    "lars": dict(lr=1.0, momentum=0.9, weight_decay=5e-4),
    "tvlars": dict(lr=1.0, momentum=0.9, weight_decay=5e-4, lam=0.01, delay_epochs=1.0),
    "lambc": dict(lr=0.01, weight_decay=1e-2, clip_lower=0.5, clip_upper=5.0),
    "clars": dict(lr=1.0, momentum=0.9, weight_decay=5e-4),
}


class _Session:
    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=generator), torch.randint(0, 10, (GLOBAL_BATCH,), generator=generator)


def _train(optimizer: str, micro: int, bn_group: int, rank: int = 0, world_size: int = 1, steps: int = 2
           ) -> dict[str, torch.Tensor]:
    """Model state (parameters and BatchNorm buffers) after `steps` optimizer steps of the real step function."""
    cfg = TrialConfig.from_dict(dict(optimizer=optimizer, model="resnet8", width=8, batch_size=GLOBAL_BATCH,
                                     micro_batch_size=micro, bn_group=bn_group, epochs=2, warmup_epochs=0,
                                     **OPTIMIZERS[optimizer]), check_data=False)
    micro, bn_group = resolve_batching(cfg.batch_size, world_size, cfg.micro_batch_size, cfg.bn_group, on_gpu=False)
    env = WorkerEnv(rank, world_size, torch.device("cpu"), None, _Session(rank, world_size))
    torch.manual_seed(0)
    model = place_model(build_model(cfg.model, 10, 16, width=cfg.width), env, bn_group)
    optimizer_, _, _ = build_training(cfg, model, steps_per_epoch=steps, epochs=cfg.epochs)
    network = nn.parallel.DistributedDataParallel(model) if world_size > 1 else model
    x, y = _batch()
    rows = slice(rank * GLOBAL_BATCH // world_size, (rank + 1) * GLOBAL_BATCH // world_size)
    for _ in range(steps):
        train_step(cfg, env, network, model, optimizer_, nn.CrossEntropyLoss(), x[rows], y[rows], micro)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _max_relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, str]:
    """The largest ‖a−b‖ / ‖a‖ over the floating-point tensors (each parameter and buffer), and which it is.

    Per tensor, not per element: LAMB's first steps are m/√v ≈ ±1 per element, so an element whose
    gradient is ~0 moves by ±lr on the last bit of its summation order (measured: LAMBC 1.4e-5 of
    the tensor's largest element, LARS 1e-7); the tensor as a whole agrees to 8e-7.
    """
    worst = (0.0, "")
    for name, value in a.items():
        if value.is_floating_point():
            scale = value.norm().clamp_min(1e-12)
            worst = max(worst, (float((value - b[name]).norm() / scale), name))
    return worst


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_micro_batches_step_like_the_whole_batch_at_the_same_bn_group(optimizer):
    whole = _train(optimizer, micro=GLOBAL_BATCH, bn_group=MICRO)
    micro = _train(optimizer, micro=MICRO, bn_group=MICRO)
    difference, where = _max_relative_difference(whole, micro)
    assert difference <= 1e-5, f"{optimizer}: {where} differs by {difference:.2e} (relative)"
    assert any("running_mean" in name for name in whole)  # BatchNorm running statistics are compared too


def test_the_bn_group_changes_the_step():
    """The comparison above can fail: the same batch normalised over 16 instead of 4 samples trains differently."""
    difference, _ = _max_relative_difference(_train("lars", micro=GLOBAL_BATCH, bn_group=GLOBAL_BATCH),
                                             _train("lars", micro=MICRO, bn_group=MICRO))
    assert difference > 1e-3


def two_workers(rank: int, port: int) -> dict[str, tuple[float, str]]:
    """One of two gloo workers: every optimizer, whole vs micro-batched; rank 0's differences."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        return {optimizer: _max_relative_difference(
                    _train(optimizer, micro=GLOBAL_BATCH // 2, bn_group=MICRO, rank=rank, world_size=2),
                    _train(optimizer, micro=MICRO, bn_group=MICRO, rank=rank, world_size=2))
                for optimizer in OPTIMIZERS}
    finally:
        dist.destroy_process_group()


def test_micro_batches_on_two_gloo_workers_step_like_the_whole_batch(tmp_path):
    # two plain processes (not multiprocessing, whose resource tracker would outlive the test module)
    port, script = free_port(), f"import sys, json; sys.path.insert(0, {str(Path(__file__).parent)!r}); " \
        "from test_micro_batching import two_workers; " \
        "json.dump(two_workers(int(sys.argv[1]), int(sys.argv[2])), open(sys.argv[3], 'w'))"
    workers = [subprocess.Popen([sys.executable, "-c", script, str(rank), str(port), str(tmp_path / f"{rank}.json")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), "\n".join(o[-3000:] for o in outputs)
    results = json.loads((tmp_path / "0.json").read_text())
    assert set(results) == set(OPTIMIZERS)
    for optimizer, (difference, where) in results.items():
        assert difference <= 1e-5, f"{optimizer} on 2 workers: {where} differs by {difference:.2e} (relative)"


@pytest.mark.parametrize("settings, message", [
    (dict(micro_batch_size=3), "micro_batch_size: 3 does not divide the per-worker batch 8"),
    (dict(micro_batch_size=4, bn_group=3), "bn_group: 3 does not divide the micro-batch 4"),
    (dict(micro_batch_size="auto"), "bn_group: set it with micro_batch_size=auto"),
    (dict(micro_batch_size=4, bn_group="sync"), "bn_group: 'sync' normalises over the whole global batch"),
    (dict(bn_group="sync"), "bn_group: 'sync' across workers needs GPUs"),
])
def test_batching_errors_name_the_setting(settings, message):
    with pytest.raises(ValueError, match=message):
        resolve_batching(16, 2, settings.get("micro_batch_size"), settings.get("bn_group"), on_gpu=False)


def test_defaults_are_written_out():
    assert resolve_batching(512, 2, None, None, on_gpu=False) == (256, 256)
    assert resolve_batching(512, 1, 128, None, on_gpu=False) == (128, 128)
    assert resolve_batching(512, 2, "auto", 64, on_gpu=True) == ("auto", 64)


@pytest.mark.parametrize("value, message", [("big", "micro_batch_size: must be a number >= 1 or 'auto'"),
                                            (0, "micro_batch_size: must be a number >= 1 or 'auto'")])
def test_config_rejects_bad_micro_batch_sizes(value, message):
    with pytest.raises(ValueError, match=message):
        TrialConfig.from_dict(dict(lr=1.0, micro_batch_size=value), check_data=False)
