"""The study's console, in place of Tune's own (`verbose=0`: its per-trial configuration box is in MLflow).

`StudyConsole`, a Tune callback, prints at Tune's heartbeat and once at the end a progress line — trials
done of the planned total, trial-epochs trained of the budget, elapsed time and an ETA — and a compact
table of the running trials (and of those that ended since the last table): each one's name, variant,
stage, searched values, epoch, validation metric and status; and one line when a trial ends.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ray import tune
from ray.tune.experiment import Trial
from ray.tune.experimental.output import ProgressReporter
from tabulate import tabulate

from study.confirm import stage_of
from study.plan import StudyPlan, from_tune
from trainables.records import DATA_WAIT_KEY, Stage

# Tune's own status cadence (30 s in Ray 2.60), read from its console reporter so ours keeps its pace.
HEARTBEAT_S = ProgressReporter._heartbeat_freq
ENDED = (Trial.TERMINATED, Trial.ERROR)


def duration(seconds: float) -> str:
    """A duration as `1h02m`, `4m05s` or `37s`."""
    s = max(0, int(round(seconds)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def figures(value: Any) -> str:
    """A float to 3 significant figures, anything else as it is ('' when absent)."""
    if value is None:
        return ""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def searched_keys(plan: StudyPlan) -> list[str]:
    """Every key the space searches, shared ones first, each once (the table's value columns)."""
    space = plan.space
    params = list(space.searched) + [p for v in space.variants.values() for p in v.searched]
    return list(dict.fromkeys(p.key for p in params))


def epoch_of(trial: Trial) -> int:
    """The last epoch the trial reported (0 before its first)."""
    return int((trial.last_result or {}).get("epoch", 0))


def last_metric(trial: Trial, metric: str, which: str = "last") -> float | None:
    """The trial's last (or `max`/`min`) reported value of `metric`: epochs without evaluation report none."""
    return trial.metric_analysis.get(metric, {}).get(which)


def trial_row(trial: Trial, keys: list[str], metric: str) -> list[str]:
    """One table row: name, variant, stage, the searched values it has, epoch, metric, status."""
    settings = from_tune(trial.config).to_dict()
    return [str(trial), trial.config.get("variant", ""), stage_of(trial.config),
            *(figures(settings.get(k)) for k in keys), str(epoch_of(trial)),
            figures(last_metric(trial, metric)), trial.status.lower()]


def status_table(trials: list[Trial], keys: list[str], metric: str) -> str:
    """The trials as a compact plain-text table."""
    headers = ["trial", "variant", "stage", *keys, "epoch", metric, "status"]
    return tabulate([trial_row(t, keys, metric) for t in trials], headers, tablefmt="simple", disable_numparse=True)


def epochs_spent(trials: list[Trial], max_epoch: int) -> int:
    """Trial-epochs of the budget spent: an ended trial spends its whole budget (ASHA's stops included)."""
    return sum(max_epoch if t.status in ENDED else min(epoch_of(t), max_epoch) for t in trials)


def eta_text(left: float, rate: float, upper_bound: bool) -> str:
    """The ETA of `left` trial-epochs at `rate` per second; an upper bound while ASHA may stop trials early."""
    if left <= 0:
        return "ETA 0s"
    if rate <= 0:
        return "ETA after the first epochs"
    eta = duration(left / rate)
    return f"ETA ≤ {eta} (an upper bound: ASHA may stop search trials early)" if upper_bound else f"ETA {eta}"


def progress_line(done: int, total: int, spent: int, budget: int, elapsed: float, eta: str) -> str:
    """Trials done of the planned total, trial-epochs spent of the budget, elapsed time and ETA."""
    return f"progress: {done}/{total} trials done, {spent}/{budget} trial-epochs, {duration(elapsed)} elapsed, {eta}"


def ended_line(trial: Trial, status: str, metric: str, mode: str, max_epoch: int) -> str:
    """One line for a trial that ended (Tune sets its status after the callbacks): name, status, epochs, best metric."""
    best = figures(last_metric(trial, metric, mode)) or "none"
    waited = last_metric(trial, DATA_WAIT_KEY, "avg")  # streamed data only
    decode = f", waiting on decoding {100 * waited:.0f}% of its training time" if waited is not None else ""
    return f"{trial} {status.lower()} after {epoch_of(trial)}/{max_epoch} epochs, best {metric} {best}{decode}"


class StudyConsole(tune.Callback):
    """Prints the study's progress and its running trials every Tune heartbeat and at the end.

    Part of the study's saved run config (a restored Tuner keeps its callbacks), so it pickles: it holds
    only the plan and this session's clock and counters, restarted by `setup`.
    """

    def __init__(self, plan: StudyPlan):
        self.plan = plan
        self.keys = searched_keys(plan)
        self.total = 0  # trials planned (Tune's num_samples, from `setup`)
        self.started = self.last_print = self.first_step = 0.0
        self.spent_at_first_step: int | None = None
        self.ended: set[str] = set()  # trials that ended since the last table

    def setup(self, total_num_samples: int | None = None, **info) -> None:
        """Tune starts (or restores) the study: this session's clock starts."""
        self.total, self.started, self.last_print = total_num_samples or 0, time.time(), -math.inf
        self.spent_at_first_step, self.ended = None, set()

    def on_step_end(self, iteration: int, trials: list[Trial], **info) -> None:
        """Tune's loop went round: print the status if a heartbeat has passed since the last."""
        if time.time() - self.last_print >= HEARTBEAT_S:
            self.show(trials)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        """A trial ended (completed, or stopped by ASHA)."""
        self.trial_ended(trial, Trial.TERMINATED)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        """A trial ended in an error (its retries spent)."""
        self.trial_ended(trial, Trial.ERROR)

    def on_experiment_end(self, trials: list[Trial], **info) -> None:
        """The study's last status."""
        self.show(trials, ended=True)

    def trial_ended(self, trial: Trial, status: str) -> None:
        """Print the trial's one end line; it stays in the next table."""
        self.ended.add(trial.trial_id)
        space = self.plan.space
        print(ended_line(trial, status, space.metric, space.mode, self.plan.max_epoch), flush=True)

    def show(self, trials: list[Trial], ended: bool = False) -> None:
        """Print the progress line and the table of running (and just ended) trials."""
        shown = [t for t in trials if t.status == Trial.RUNNING or t.trial_id in self.ended]
        table = f"\n{status_table(shown, self.keys, self.plan.space.metric)}" if shown else ""
        print(self.progress(trials, ended) + table, flush=True)
        self.last_print, self.ended = time.time(), set()

    def progress(self, trials: list[Trial], ended: bool = False) -> str:
        """The progress line, its ETA from this session's rate of spending the budget ("ended" at the end)."""
        now, spent = time.time(), epochs_spent(trials, self.plan.max_epoch)
        if self.spent_at_first_step is None:
            self.first_step, self.spent_at_first_step = now, spent
        total = max(self.total, len(trials))
        budget = total * self.plan.max_epoch
        rate = (spent - self.spent_at_first_step) / max(now - self.first_step, 1e-9)
        search_ended = sum(1 for t in trials if stage_of(t.config) == Stage.SEARCH and t.status in ENDED)
        eta = "ended" if ended else eta_text(budget - spent, rate, search_ended < self.plan.space.total_samples)
        return progress_line(sum(1 for t in trials if t.status in ENDED), total, spent, budget, now - self.started, eta)
