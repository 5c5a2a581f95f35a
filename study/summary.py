"""A study's ending: each stage's trial count and the search's best trial, how much of its slots trained
(`train_fraction`) and the median trial start overhead, its report, and how to review it."""

from __future__ import annotations

import json
import math
import posixpath
import statistics
import sys
import time

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from ray.tune.result import TRIAL_ID

from study.clock import StudyClock
from study.confirm import stage_of
from study.console import searched_keys
from study.mlflow_store import review_hint
from study.optuna_store import SearchJournal
from study.plan import StudyPlan, from_tune
from study.record import StudyRecord
from study.tracking import START_OVERHEAD_METRIC, error_summary
from trainables.records import (DRIVER_CPU_METRIC, OPTUNA_JOURNAL_ARTIFACT, PARENT_TAG, STAGE_TAG, STUDY_WALL_METRIC,
                                TRIAL_ID_TAG, Stage)


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


def untrained(results) -> str | None:
    """Why the study trained nothing (every trial failed before its first epoch), or None if one trained."""

    if any((r.metrics or {}).get("epoch") for r in results):
        return None
    failed = [r for r in results if r.error]
    first = error_summary(str(failed[0].error)) if failed else "no trial reported an epoch"
    return f"no trial trained: {len(failed)} of {len(results)} trials failed; the first: {first}"


def write_report(record: StudyRecord) -> None:
    """The study's report (tables, parquet, figures) into <study>/report and onto its parent MLflow run."""
    from reports.build import FORMATS, build_report

    try:
        report = build_report(record.tracking_uri, record.experiment, record.report_dir, formats=FORMATS,
                              study=record.parent_run_id)
    except Exception as err:  # the trials are recorded already: a failed report must not fail the study
        print(f"warning: the report failed ({type(err).__name__}: {err}); retry with: {report_command(record)}",
              file=sys.stderr)
        return
    print("\n" + report.markdown)
    print(f"report: {record.report_dir} ({len(report.files)} files; also on MLflow run {record.parent_run_id} "
          "under report/)")


def report_command(record: StudyRecord) -> str:
    """The command that builds the study's report from MLflow."""
    return (f"python -m reports.table --experiment {record.experiment} --tracking-uri {record.tracking_uri} "
            f"--study {record.parent_run_id}")


def result_stages(results, client: MlflowClient, parent: str) -> list[Stage]:
    """Each Tune result's stage: from its config, which a trial that failed before its first report may not have
    (its actor lost when the node's raylet died: `Result.config` is None, and the report once crashed on it, so
    that `--resume` of such a study failed after its last trial), then from its trial run's MLflow tag."""
    if all(r.config is not None for r in results):
        return [stage_of(r.config) for r in results]
    tagged = {run.data.tags.get(TRIAL_ID_TAG): run.data.tags.get(STAGE_TAG) for run in
              client.search_runs([client.get_run(parent).info.experiment_id], f"tags.`{PARENT_TAG}` = '{parent}'",
                                 max_results=10_000)}
    return [stage_of(r.config) if r.config is not None else Stage(tagged.get((r.metrics or {}).get(TRIAL_ID))
                                                                   or Stage.SEARCH) for r in results]


def report_stages(results, plan: StudyPlan, record: StudyRecord, client) -> None:
    """Print each stage's trial count and the search's best trial by the validation metric (logged on the
    parent run)."""

    space = plan.space
    stages = result_stages(results, client, record.parent_run_id)
    for stage in Stage:
        ran = [r for r, of in zip(results, stages) if of == stage]
        print(f"{stage}: {len(ran)} trials ({sum(1 for r in ran if r.error)} errored)")
    scores = [(r.metrics_dataframe[space.metric].agg("max" if space.mode == "max" else "min"), r)
              for r, of in zip(results, stages) if of == Stage.SEARCH and r.metrics_dataframe is not None
              and space.metric in r.metrics_dataframe and r.metrics_dataframe[space.metric].notna().any()]
    if scores:
        value, best = (max if space.mode == "max" else min)(scores, key=lambda s: s[0])
        settings = from_tune(best.config).to_dict()
        searched = {k: settings[k] for k in searched_keys(plan) if k in settings}
        print(f"best search trial: {space.metric} = {value:.2f}: {best.config['variant']} "
              f"{json.dumps(searched, default=str)}")
        client.log_metric(record.parent_run_id, f"best_{space.metric}", float(value))


def record_search(record: StudyRecord, client) -> None:
    """The search's Optuna study onto the parent run (`OPTUNA_JOURNAL_ARTIFACT`, for the report), and how to view it."""
    journal = SearchJournal.of(record)
    if not journal.live.is_file():
        return
    client.log_artifact(record.parent_run_id, str(journal.live), posixpath.dirname(OPTUNA_JOURNAL_ARTIFACT))
    print(f"optuna: study {journal.study_name!r}, {len(journal.load().trials)} trials in {journal.live}; "
          f"view it: {journal.dashboard_command()}")


def record_session(client, parent: str, seconds: float, cpu: float) -> float:
    """Add this session's wall and driver CPU seconds to what the study's earlier sessions (stopped, then resumed)
    recorded on its parent run (a stopped session records its own at the stop); returns its wall seconds in all.
    (A `--resume` of a finished study once set its `wall_seconds` from 277 s to the 1 s that resume took.)"""
    earlier = client.get_run(parent).data.metrics
    totals = {STUDY_WALL_METRIC: earlier.get(STUDY_WALL_METRIC, 0.0) + seconds,
              DRIVER_CPU_METRIC: earlier.get(DRIVER_CPU_METRIC, 0.0) + cpu}
    client.log_batch(parent, metrics=[Metric(k, v, int(time.time() * 1000), 0) for k, v in totals.items()])
    return totals[STUDY_WALL_METRIC]


def summarize(plan: StudyPlan, record: StudyRecord, client, exp_id: str, started: float, clock: StudyClock,
              cpu_started: float, status: str = "FINISHED") -> None:
    """Print the study's efficiency and how to review it; close the parent run as `status` with its summary (and the
    driver's CPU-seconds since `cpu_started`, a `time.process_time()`: what Tune, the search and the MLflow writes
    cost it)."""
    clock.read_trials(client, exp_id, record.parent_run_id, started)
    seconds, cpu, parent = time.time() - started, time.process_time() - cpu_started, record.parent_run_id
    total = record_session(client, parent, seconds, cpu)
    earlier = f" ({total:.0f} s with its earlier sessions)" if total > seconds + 0.5 else ""
    print(f"\nstudy: {seconds:.0f} s{earlier}")
    efficiency = study_efficiency(client, exp_id, parent, started, seconds, plan.concurrency)
    if efficiency:
        print(f"train_fraction = {efficiency['train_fraction']:.2f} (trial epoch seconds / (wall seconds × "
              f"{plan.concurrency} concurrent)); median start overhead "
              f"{efficiency['start_overhead_median_seconds']:.1f} s")
    record_search(record, client)
    if efficiency:
        client.log_batch(parent, metrics=[Metric(k, v, int(time.time() * 1000), 0) for k, v in efficiency.items()])
    client.set_terminated(parent, status)
    print(f"review: {review_hint(record.tracking_uri, exp_id)}")
