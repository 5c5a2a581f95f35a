"""Trust-ratio telemetry: per-step, per-layer ρ, ‖w‖ and ‖g‖ kept on the device until collected."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pyarrow is imported lazily so `optim` stays importable without it.
    import pyarrow

FIELDS = ("rho", "w_norm", "g_norm")


@dataclass
class TelemetryBatch:
    """Host copy of recorded steps: `values[s, l, f]` for step `steps[s]`, layer `layers[l]`, field FIELDS[f]."""

    steps: torch.Tensor  # int64 [S]
    layers: list[str]
    values: torch.Tensor  # float32 [S, L, 3]

    @property
    def rho(self) -> torch.Tensor:
        return self.values[..., 0]

    @property
    def w_norm(self) -> torch.Tensor:
        return self.values[..., 1]

    @property
    def g_norm(self) -> torch.Tensor:
        return self.values[..., 2]

    def to_arrow(self) -> "pyarrow.Table":
        """Long table with columns step, layer, rho, w_norm, g_norm (one row per step and layer)."""
        import pyarrow as pa

        num_steps, num_layers = self.values.shape[:2]
        flat = self.values.reshape(num_steps * num_layers, 3).numpy()
        layer_idx = pa.array(torch.arange(num_layers).repeat(num_steps).numpy())
        return pa.table({
            "step": pa.array(self.steps.repeat_interleave(num_layers).numpy()),
            "layer": pa.DictionaryArray.from_arrays(layer_idx, pa.array(self.layers)).cast(pa.string()),
            "rho": pa.array(flat[:, 0]),
            "w_norm": pa.array(flat[:, 1]),
            "g_norm": pa.array(flat[:, 2]),
        })


class TrustRatioTelemetry:
    """Collects one [layers, 3] row block per recorded step, on the parameters' device.

    `record` only queues device tensors (no host synchronisation); `collect` moves everything queued
    to the host in one transfer and clears the queue. Record every `every`-th optimizer step.
    """

    def __init__(self, layer_names: list[str], every: int = 1):
        if every < 1:
            raise ValueError(f"telemetry every must be >= 1, got {every}")
        self.layers = list(layer_names)
        self.every = every
        self._steps: list[int] = []
        self._rows: list[torch.Tensor] = []

    def wants(self, step: int) -> bool:
        return step % self.every == 0

    def record(self, step: int, rows: torch.Tensor) -> None:
        """Queue `rows` ([layers, 3]: ρ, ‖w‖, ‖g‖) for optimizer step `step` (0-based)."""
        if rows.shape != (len(self.layers), 3):
            raise ValueError(f"telemetry rows must be [{len(self.layers)}, 3], got {tuple(rows.shape)}")
        self._steps.append(step)
        self._rows.append(rows.detach())

    def __len__(self) -> int:
        return len(self._steps)

    def collect(self) -> TelemetryBatch:
        """Hand over everything recorded since the last collect, in one device-to-host transfer."""
        if self._rows:
            values = torch.stack(self._rows).to("cpu", torch.float32)
        else:
            values = torch.empty(0, len(self.layers), 3)
        batch = TelemetryBatch(torch.tensor(self._steps, dtype=torch.int64), self.layers, values)
        self._steps, self._rows = [], []
        return batch
