"""When a study process started, its first trial started and its last trial ended.

Light on purpose (no MLflow, no Ray): `study.run` creates it before any check runs."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from trainables.records import PARENT_TAG

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

FIXED_COST_TARGET_SECONDS = 10.0  # time to the first trial, and from the last trial to exit (issue 27)


def process_started() -> float:
    """When this process started, in epoch seconds (to the kernel's clock tick).

    Not psutil's `create_time()` alone on Linux: it adds the start to /proc/stat's boot time, which is rounded down
    to a whole second, so it reads up to 1 s early — measured here, 0.28 s before a `time.time()` taken as the
    interpreter's first statement. The start's distance from now on the kernel's boot clock has no such rounding."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, IndexError, ValueError, AttributeError):  # not Linux
        return psutil.Process().create_time()


@dataclass
class StudyClock:
    """A study process's fixed costs: its start → its first trial's start, and its last trial's end → exit."""

    process_started: float = field(default_factory=process_started)
    first_trial: float | None = None  # epoch seconds, from the trials' MLflow runs
    last_trial: float | None = None

    def read_trials(self, client: MlflowClient, exp_id: str, parent: str, since: float) -> None:
        """First start and last end of the trial runs this session of the study started (MLflow run times)."""
        runs = [r for r in client.search_runs([exp_id], f"tags.`{PARENT_TAG}` = '{parent}'")
                if r.info.start_time >= since * 1000]
        if runs:
            self.first_trial = min(r.info.start_time for r in runs) / 1000
            self.last_trial = max((r.info.end_time or r.info.start_time) for r in runs) / 1000

    def line(self, now: float | None = None) -> str:
        """Both fixed costs (empty when no trial ran), each against the target."""
        if self.first_trial is None or self.last_trial is None:
            return ""
        before, after = self.first_trial - self.process_started, (now or time.time()) - self.last_trial
        return (f"fixed cost: {before:.1f} s from the process's start to the first trial, {after:.1f} s from the last "
                f"trial's end to exit (target <= {FIXED_COST_TARGET_SECONDS:g} s each)")
