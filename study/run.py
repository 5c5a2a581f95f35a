"""`python -m study.run --space NAME`: run (or `--resume`) a named study and record it in MLflow.

Every input is checked before anything is written: the space and `--set` keys/values (through the
same validation a trial uses), the data directory, the MLflow store and the Ray address. A bad
input prints one `error:` line and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import traceback
from pathlib import Path

from study.cluster import TrialShape, fit_trials, local_nodes, ray_nodes
from study.errors import INPUT_ERROR, PLATFORM_ERROR, InputError, PlatformError, one_line
from study.plan import StudyPlan, make_plan, parse_sets, settings_of
from study.record import StudyRecord
from trainables.data import Dataset, load_dataset, unwritable
from trainables.download import DATA_URL_ENV, ensure_dataset


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m study.run", description=__doc__.splitlines()[0])
    p.add_argument("--space", help="search space name (see --list)")
    p.add_argument("--list", action="store_true", help="print every space and every optimizer with a one-line description")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a trial setting or hyperparameter, or change budget/resources (num_samples, workers, …)")
    p.add_argument("--num-samples", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int, default=0, help="Optuna sampler seed and trial seed (default 0)")
    p.add_argument("--data-dir", help="the dataset's folder (default $LAYERWISE_DATA/<dataset>, else the user's cache; "
                                     "CIFAR and Tiny ImageNet are downloaded there when absent)")
    p.add_argument("--data-url", default=os.environ.get(DATA_URL_ENV),
                   help=f"a mirror's base URL for the download (same file names and checksums; ${DATA_URL_ENV})")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="Ray cluster to join (default: local)")
    p.add_argument("--storage", default="results", help="study storage: a path every node sees (default ./results)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///<storage>/mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment (default: the space name)")
    p.add_argument("--resume", action="store_true", help="continue the latest interrupted study of this space")
    p.add_argument("--max-failures", type=int, default=1, help="worker-crash retries per trial (default 1)")
    p.add_argument("--wait-for-resources", action="store_true",
                   help="skip the check that the cluster can place one trial (autoscaling clusters)")
    return p.parse_args(argv)


def list_spaces() -> None:
    from optim.factory import SPECS, trial_hparams
    from search_spaces import SPACES

    width = max(map(len, SPACES))
    for name, space in SPACES.items():
        print(f"{name:<{width}}  {space.description}")
    print("\noptimizers (--set optimizer=NAME, and any of its hyperparameters):")
    for name, spec in SPECS.items():
        print(f"  {name:<8} {spec.description}; {', '.join(sorted(trial_hparams(name)))}")


def check_address(address: str | None) -> None:
    """Fail fast on an unreachable `host:port` Ray address (ray.init would retry for a long time)."""
    if not address or address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError):
        raise InputError(f"--address: cannot reach a Ray cluster at {address!r}") from None


def join_cluster(address: str) -> None:
    """Connect to the Ray cluster at `address` (its reachability was checked already)."""
    import ray

    try:
        ray.init(address=address, log_to_driver=False)
    except Exception as err:  # Ray's own failures are the platform's, never the user's input
        raise PlatformError(f"could not join the Ray cluster at {address!r}: {one_line(err)}") from err


def start_local_ray(plan: StudyPlan) -> None:
    from trainables.launch import init_local_ray, local_cpu_slots

    slots = local_cpu_slots(plan.space.workers * plan.concurrency, plan.space.cpus_per_worker)
    cache = os.environ.get("LAYERWISE_CACHE")
    try:
        init_local_ray(slots, runtime_env={"env_vars": {"LAYERWISE_CACHE": cache}} if cache else None)
    except Exception as err:
        raise PlatformError(f"could not start a local Ray: {one_line(err)}") from err


def fit_to_cluster(plan: StudyPlan, address: str | None, wait: bool) -> None:
    """Fail fast if no trial can ever be placed; else size the default concurrency to the cluster."""
    space = plan.space
    shape = TrialShape(space.workers, space.cpus_per_worker, space.gpus_per_worker)
    nodes, where = (ray_nodes(), f"the Ray cluster at {address}") if address else (local_nodes(shape), "this machine")
    plan.capacity = fit_trials(nodes, shape, where, wait)


def obtain_data(plan: StudyPlan, data_url: str | None) -> Dataset:
    """The dataset on disk (downloaded once if absent) and decoded (cached), before any trial starts."""
    fixed = plan.trial_config({})
    ensure_dataset(fixed["dataset"], fixed["data_dir"], data_url)
    return load_dataset(fixed["dataset"], fixed["data_dir"], fixed.get("image_size"))


def prepare(args: argparse.Namespace) -> tuple[StudyPlan, StudyRecord]:
    """Resolve the plan and the study's record (new, or saved by the study to resume); writes nothing."""
    from study.tracking import check_tracking_uri, default_tracking_uri

    if "://" in args.storage:
        raise InputError("--storage: object-store URIs are not supported yet; use a path every node sees "
                         "(a shared filesystem for multi-node clusters)")
    storage = Path(args.storage).resolve()
    if args.resume:
        record = StudyRecord.latest(storage, args.space)
        if record is None:
            raise InputError(f"--resume: no study of space {args.space!r} under {storage}")
        check_tracking_uri(record.tracking_uri)
        return make_plan(record.space, dict(record.overrides)), record
    plan = make_plan(args.space, parse_sets(args.set), num_samples=args.num_samples, epochs=args.epochs,
                     seed=args.seed, data_dir=args.data_dir)
    why = unwritable(storage)
    if why:
        raise InputError(f"--storage: cannot write to {storage} ({why})")
    tracking_uri = args.tracking_uri or default_tracking_uri(storage)
    if args.tracking_uri:
        check_tracking_uri(tracking_uri)
    return plan, StudyRecord.new(storage, args.space, overrides=plan.overrides, seed=args.seed,
                                 tracking_uri=tracking_uri, experiment=args.experiment or args.space)


def run(args: argparse.Namespace, plan: StudyPlan, record: StudyRecord, data: Dataset) -> int:
    import ray

    from study.tracking import StudyRecorder, check_tracking_uri, experiment_id, start_parent_run
    from study.tuner import new_tuner, restored_tuner

    client = check_tracking_uri(record.tracking_uri)
    exp_id = experiment_id(client, record.experiment, record.artifact_root)
    record.parent_run_id = start_parent_run(
        client, exp_id, str(record.study_dir), plan.space.describe() | {"overrides": plan.overrides},
        {"space": record.space, "command": " ".join(sys.argv)})
    record.save()
    print(f"study {record.name}: space {record.space}, {plan.space.num_samples} trials, "
          f"MLflow experiment {record.experiment!r} run {record.parent_run_id}", flush=True)

    started = time.time()
    # The decoded dataset goes into Ray's object store once; every trial (and Train worker) reads it
    # from there, zero-copy on its node, instead of loading and decoding files.
    data_ref = ray.put(data.to_arrays())
    if args.resume:
        tuner = restored_tuner(plan, record, args.max_failures, data_ref)
    else:
        recorder = StudyRecorder(record.tracking_uri, exp_id, record.parent_run_id, plan.max_epoch,
                                 str(record.train_dir))
        tuner = new_tuner(plan, record, [recorder], args.max_failures, data_ref)
    results = tuner.fit()
    summarize(results, plan, record, client, exp_id, started)
    write_report(record)
    return 0


def write_report(record: StudyRecord) -> None:
    """The study's report (tables, parquet, figures) into <study>/report and onto its parent MLflow run."""
    from reports.build import FORMATS, build_report

    try:
        report = build_report(record.tracking_uri, record.experiment, record.report_dir, formats=FORMATS,
                              study=record.parent_run_id)
    except Exception as err:  # the trials are recorded already: a failed report must not fail the study
        print(f"warning: the report failed ({type(err).__name__}: {err}); retry with: python -m reports.table "
              f"--experiment {record.experiment} --tracking-uri {record.tracking_uri} --study {record.parent_run_id}",
              file=sys.stderr)
        return
    print("\n" + report.markdown)
    print(f"report: {record.report_dir} ({len(report.files)} files; also on MLflow run {record.parent_run_id} "
          "under report/)")


def summarize(results, plan: StudyPlan, record: StudyRecord, client, exp_id: str, started: float) -> None:
    """Print the best trial, the study's efficiency and how to review it; close the parent run with its summary."""
    from mlflow.entities import Metric

    from study.tracking import study_efficiency

    space, seconds, parent = plan.space, time.time() - started, record.parent_run_id
    try:
        best = results.get_best_result(metric=space.metric, mode=space.mode, scope="last")
    except RuntimeError:  # no trial reported the metric
        best = None
    errors = sum(1 for r in results if r.error)
    print(f"\n{len(results)} trials in {seconds:.0f} s ({errors} errored)")
    efficiency = study_efficiency(client, exp_id, parent, started, seconds, plan.concurrency)
    if efficiency:
        client.log_batch(parent, metrics=[Metric(k, v, int(time.time() * 1000), 0) for k, v in efficiency.items()])
        print(f"train_fraction = {efficiency['train_fraction']:.2f} (trial epoch seconds / (wall seconds × "
              f"{plan.concurrency} concurrent)); median start overhead "
              f"{efficiency['start_overhead_median_seconds']:.1f} s")
    if best is not None and best.metrics and space.metric in best.metrics:
        value = best.metrics[space.metric]
        print(f"best {space.metric} = {value:.2f} (epoch {best.metrics.get('epoch')}): "
              f"{json.dumps(settings_of(best.config), default=str)}")
        client.log_metric(parent, f"best_{space.metric}", float(value))
    client.log_metric(parent, "wall_seconds", seconds)
    client.set_terminated(parent, "FINISHED")
    print(f"review: mlflow ui --backend-store-uri {record.tracking_uri} --host 127.0.0.1")


def fail(code: int, message: str) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        list_spaces()
        return 0
    if not args.space:
        return fail(INPUT_ERROR, "--space is required (see --list)")
    import ray

    ray_was_up = ray.is_initialized()
    try:
        return _checked_run(args)
    finally:
        if not ray_was_up and ray.is_initialized():  # leave an in-process caller's process as it was
            ray.shutdown()


def _checked_run(args: argparse.Namespace) -> int:
    try:  # cheapest checks first: settings and services, the cluster, then the data (maybe a download)
        plan, record = prepare(args)
        check_address(args.address)
        if args.address:
            join_cluster(args.address)
        fit_to_cluster(plan, args.address, args.wait_for_resources)
        data = obtain_data(plan, args.data_url)
    except PlatformError as err:
        return fail(PLATFORM_ERROR, str(err))
    except (InputError, ValueError) as err:  # ValueError: a setting or the data rejected by their own checks
        return fail(INPUT_ERROR, str(err))
    try:
        if not args.address:
            start_local_ray(plan)
        return run(args, plan, record, data)
    except PlatformError as err:
        return fail(PLATFORM_ERROR, str(err))
    except Exception as err:  # the study crashed: say what, keep the traceback out of the user's way
        log = record.error_log
        if record.study_dir.is_dir():
            log.write_text(traceback.format_exc())
        return fail(PLATFORM_ERROR, f"the study failed: {one_line(err)}"
                                    + (f" (traceback in {log})" if log.is_file() else ""))


if __name__ == "__main__":
    sys.exit(main())
