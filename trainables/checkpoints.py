"""A trial's epoch checkpoints through Ray's checkpoint API (via a `Session`: a Ray Train worker, or the Tune
trial actor itself for one-worker trials): what carries over between epochs, saving it with each epoch's
report, and restoring it.

A checkpoint directory holds `state.pt` (model, optimizer incl. momentum and the step counter t, scheduler,
next epoch, metric history, stage state: tensors and plain containers, read back with weights_only=True),
`history.json` (the per-epoch metrics so far) and `telemetry.parquet` (every recorded step so far).
Randomness is derived from (seed, epoch, step, rank) rather than carried as generator state, so a restarted
run replays exactly the batches and augmentations of an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from optim.telemetry import TrustRatioTelemetry
from trainables.config import TrialConfig
from trainables.records import HISTORY_FILE, NODE_KEY, STATE_FILE, TELEMETRY_FILE
from trainables.safe_load import load_plain
from trainables.worker import WorkerEnv


@dataclass
class RunState:
    """Everything that carries over between epochs and survives a restart."""

    next_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    telemetry: list[pa.Table] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    resumed_from: int = 0  # epoch this attempt started at (not saved)
    setup_seconds: float | None = None  # loop entry to first epoch (data, model, restore); reported once

    def add_telemetry(self, telemetry: TrustRatioTelemetry | None, epoch: int) -> dict[str, float]:
        """Collect and store one epoch's telemetry; return the trust-ratio summary over layers (per-layer epoch mean)."""
        # `is None`, not truthiness: an epoch that recorded no step has len(telemetry) == 0
        batch = telemetry.collect() if telemetry is not None else None
        if batch is None or len(batch.steps) == 0:
            return {}
        table = batch.to_arrow()
        self.telemetry.append(table.append_column("epoch", pa.array([epoch] * table.num_rows, pa.int32())))
        per_layer = batch.rho.nanmean(0)
        per_layer = per_layer[per_layer.isfinite()]
        if per_layer.numel() == 0:
            return {"trust_ratio_median": math.nan, "trust_ratio_min": math.nan, "trust_ratio_max": math.nan}
        return {"trust_ratio_median": per_layer.median().item(), "trust_ratio_min": per_layer.min().item(),
                "trust_ratio_max": per_layer.max().item()}


def restore(modules: dict[str, Any], env: WorkerEnv) -> RunState:
    """Load the latest Ray checkpoint (if any) into `modules` (name → object with load_state_dict)."""
    device = env.device
    checkpoint = env.session.checkpoint()
    if checkpoint is None:
        return RunState()
    with checkpoint.as_directory() as directory:  # (a bucket's checkpoint arrives as a local copy)
        saved = load_plain(Path(directory) / STATE_FILE, f"{checkpoint.path}/{STATE_FILE}", map_location=device)
        tables = []
        if (Path(directory) / TELEMETRY_FILE).is_file():
            tables = [pq.read_table(Path(directory) / TELEMETRY_FILE)]
    for name, module in modules.items():
        if name in saved["modules"]:
            module.load_state_dict(saved["modules"][name])
    extra = {**saved["extra"], "restarts": saved["extra"].get("restarts", 0) + 1}
    return RunState(saved["next_epoch"], saved["history"], tables, extra, resumed_from=saved["next_epoch"])


def save_checkpoint(directory: Path, modules: dict[str, Any], state: RunState, cfg: TrialConfig) -> None:
    """The epoch's checkpoint files: `state.pt`, `history.json` and (when recorded) `telemetry.parquet`."""
    torch.save({"modules": {k: m.state_dict() for k, m in modules.items()}, "next_epoch": state.next_epoch,
                "history": state.history, "extra": state.extra, "config": cfg.to_dict()}, directory / STATE_FILE)
    (directory / HISTORY_FILE).write_text(json.dumps(state.history, default=str))
    if state.telemetry:
        table = pa.concat_tables(state.telemetry)
        pq.write_table(table, directory / TELEMETRY_FILE)
        state.telemetry = [table]


def report(env: WorkerEnv, state: RunState, metrics: dict[str, Any], modules: dict[str, Any] | None,
           cfg: TrialConfig) -> None:
    """Report the epoch's metrics; with `modules`, rank 0 also saves the epoch's checkpoint."""
    metrics["restarts"] = state.extra.get("restarts", 0)  # times this run resumed from a checkpoint
    if state.setup_seconds is not None:  # the first report of this attempt: its start-up cost in the loop, its node
        metrics["setup_seconds"], state.setup_seconds = state.setup_seconds, None
        if ray.is_initialized():  # (a loop run outside Ray, as in tests, has no node)
            metrics[NODE_KEY] = ray.get_runtime_context().get_node_id()
    state.history.append(metrics)
    name = f"epoch_{state.next_epoch:04d}"
    if modules is None or env.rank != 0:
        env.session.report(metrics, None, name)
        return
    with tempfile.TemporaryDirectory() as directory:
        save_checkpoint(Path(directory), modules, state, cfg)
        env.session.report(metrics, directory, name)
