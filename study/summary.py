"""A study's closing numbers from its MLflow records: how much of its slots trained (`train_fraction`) and
the median trial start overhead."""

from __future__ import annotations

import math
import statistics

from mlflow.tracking import MlflowClient

from study.tracking import START_OVERHEAD_METRIC
from trainables.records import PARENT_TAG


def study_efficiency(client: MlflowClient, exp_id: str, parent: str, since: float, seconds: float,
                     concurrency: int) -> dict[str, float]:
    """`train_fraction` = Σ trial epoch seconds ÷ (wall seconds × concurrent trials), and the median
    start overhead, over what this session of the study ran (MLflow timestamps ≥ `since`)."""
    since_ms = int(since * 1000)
    runs = client.search_runs([exp_id], f"tags.`{PARENT_TAG}` = '{parent}'")

    def values(key: str) -> list[float]:
        return [m.value for run in runs for m in client.get_metric_history(run.info.run_id, key)
                if m.timestamp >= since_ms and math.isfinite(m.value)]

    epoch_seconds, overheads = values("epoch_seconds"), values(START_OVERHEAD_METRIC)
    if not epoch_seconds or seconds <= 0:
        return {}
    return {"train_fraction": sum(epoch_seconds) / (seconds * concurrency),
            "start_overhead_median_seconds": statistics.median(overheads) if overheads else math.nan}
