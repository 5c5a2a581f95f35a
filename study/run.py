"""`python -m study.run --space NAME`: run (or `--resume`) a named study and record it in MLflow.

Every input is checked before anything is written: the space and `--set` keys/values (through the
same validation a trial uses), the data directory, the MLflow store and the Ray address. A bad
input prints one `error:` line and exits with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import socket
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from study.cluster import TrialShape, check_fits_object_store, fit_trials, local_nodes, ray_nodes, smallest_store
from study.errors import (INPUT_ERROR, PLATFORM_ERROR, InputError, PlatformError, full_disk, one_line,
                          stopped_status)
from study.plan import StudyPlan, check_variants, in_actor, make_plan, parse_sets
from study.record import STUDY_FILE, StudyRecord, release_held
from study.signals import StopSignals, signal_of, through_ray_start
from study.storage import Location
from study.tune_state import reached_tune, repair_tune_state
from trainables.cache import CACHE_ENV, unwritable_cache
from trainables.config import TrialConfig
from trainables.data import STREAMED, Dataset, check_data_dir, check_validation_size, load_dataset
from trainables.download import DATA_URL_ENV, ensure_dataset
from trainables.folders import is_uri
from trainables.stream import SOURCE_IMAGES, Catalog, build_catalog, decoders_for
from trainables.environment import set_library_defaults, with_worker_env


DEFAULT_SEED = 0  # --seed's
# What a study is (`StudyRecord`: its plan's overrides, seed, MLflow store and experiment, transfer): fixed when it
# starts, so `--resume`, which restores it from its study.json, refuses them rather than silently ignoring them.
STUDY_FLAGS = ("--set", "--num-samples", "--epochs", "--seed", "--confirm", "--seeds", "--max-seeds", "--variants",
               "--data-dir", "--tracking-uri", "--experiment", "--transfer-from")


def nonempty(text: str) -> str:
    """An argparse `type` for a path, URI or name: `--storage ""` (an unset shell variable) once wrote the study
    into the working directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m study.run", description=__doc__.splitlines()[0])
    p.add_argument("--space", help="search space name (see --list)")
    p.add_argument("--list", action="store_true", help="print every space and every optimizer with a one-line description")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a trial setting or hyperparameter, or change budget/resources (num_samples, workers, …)")
    p.add_argument("--num-samples", type=int, help="search trials per variant (default: the space's)")
    p.add_argument("--epochs", type=int, help="training epochs of every trial (default: the space's; = --set epochs=N)")
    p.add_argument("--seed", type=int,
                   help="Optuna sampler seed, and the search trials' seed and validation split unless --set seed=… / "
                        f"split_seed=… fix those (default {DEFAULT_SEED})")
    p.add_argument("--confirm", type=int, help="best configurations per variant re-run after the search "
                                               "(default: the space's; 0: no confirm stage)")
    p.add_argument("--seeds", type=int, help="fresh seeds per confirmed configuration: the first round (default: the "
                                             "space's)")
    p.add_argument("--max-seeds", type=int, help="sequential confirm: seeds are added to the variants of each open "
                                                 "comparison up to this many (default: the space's; = --seeds: one round)")
    p.add_argument("--variants", help="run only these of the space's variants (comma-separated; see --list)")
    p.add_argument("--data-dir", type=nonempty, help="the dataset's folder (default $LAYERWISE_DATA/<dataset>, else the user's cache; "
                                     "CIFAR and Tiny ImageNet are downloaded there when absent)")
    p.add_argument("--data-url", default=os.environ.get(DATA_URL_ENV),
                   help=f"a mirror's base URL for the download (same file names and checksums; ${DATA_URL_ENV})")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="Ray cluster to join (default: local)")
    p.add_argument("--storage", type=nonempty, default="results",
                   help="study storage: a local folder (default ./results), or what Ray takes: s3://…, gs://…")
    p.add_argument("--shared-storage", action="store_true",
                   help="a local --storage path is on a filesystem every node of the cluster shares")
    p.add_argument("--tracking-uri", type=nonempty, help="MLflow tracking URI (default sqlite:///<storage>/mlflow.db)")
    p.add_argument("--experiment", type=nonempty, help="MLflow experiment (default: the space name)")
    p.add_argument("--resume", action="store_true",
                   help="continue the latest study of this space under --storage, as it was started (a finished "
                        "one: its summary and report built again)")
    p.add_argument("--resume-errored", action="store_true",
                   help="with --resume: restart its errored trials too, from their last checkpoints (Tune's "
                        "resume_errored): trials a dead raylet or node took down with the driver")
    p.add_argument("--transfer-from", metavar="EXPERIMENT[,…]",
                   help="start the search from a fit of the best lr (and TVLARS' λ) against batch size over these MLflow "
                        "experiments' studies of the same optimizer (default: this study's experiment, where it holds "
                        "two batch sizes or more; 'none': start from nothing)")
    p.add_argument("--max-failures", type=int, default=1,
                   help="worker-crash retries per trial (default 1; -1: without limit, as Ray's FailureConfig)")
    p.add_argument("--ray-dashboard", action="store_true",
                   help="start the local Ray with its dashboard (default: only for multi-worker trials, whose Ray "
                        "Train runs need its State API; it costs ~1 s of the study's start)")
    p.add_argument("--wait-for-resources", action="store_true",
                   help="skip the check that the cluster can place one trial (autoscaling clusters)")
    return p.parse_args(argv)


def list_spaces() -> None:
    from optim.factory import SPECS, trial_hparams
    from search_spaces import SPACES
    from trainables.models import MODELS_HINT

    width = max(map(len, SPACES))
    for name, space in SPACES.items():
        print(f"{name:<{width}}  {space.description}")
        if len(space.variants) > 1:
            print(f"{'':<{width}}  variants (--variants): {', '.join(space.variants)}")
    print(f"\n{MODELS_HINT} (--set model=NAME)")
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


# The project's own packages (as pyproject.toml lists them): shipped to every node of a cluster.
PROJECT_PACKAGES = ("optim", "trainables", "search_spaces", "study", "reports")


def code_runtime_env() -> dict | None:
    """Ray's runtime environment that brings this project's code to every node (`py_modules`), so a node
    with only the Python dependencies runs trials, and the workers' environment (`WORKER_ENV`); none for a Ray
    job, whose `--working-dir` (and `--runtime-env`) ship them."""
    import importlib

    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    if RAY_JOB_CONFIG_JSON_ENV_VAR in os.environ:
        return None
    return with_worker_env({"py_modules": [importlib.import_module(name) for name in PROJECT_PACKAGES]})


def join_cluster(address: str) -> None:
    """Connect to the Ray cluster at `address` (its reachability was checked already), with the code."""
    import ray

    try:
        ray.init(address=address, log_to_driver=False, runtime_env=code_runtime_env())
    except Exception as err:  # Ray's own failures are the platform's, never the user's input
        raise PlatformError(f"could not join the Ray cluster at {address!r}: {one_line(err)}") from err


def check_storage_reaches_nodes(storage: Location, shared: bool) -> None:
    """A local `--storage` on a cluster of several nodes: each node would keep its trials' checkpoints and
    telemetry on its own disk, out of reach of the study's records and of `--resume`."""
    nodes = ray_nodes()
    if storage.is_local and not shared and len(nodes) > 1:
        raise InputError(f"--storage: {storage} is a local path, but the Ray cluster has {len(nodes)} nodes, each "
                         f"with its own disk: trials' checkpoints and telemetry would stay on the node that ran "
                         f"them. Use object storage (--storage s3://bucket/prefix, gs://…), or pass --shared-storage "
                         f"if {storage} is on a filesystem every node mounts")


def start_local_ray(plan: StudyPlan, dashboard: bool) -> None:
    """The local Ray, with its dashboard when asked or when Ray Train runs the trials (`in_actor`)."""
    from trainables.local_ray import init_local_ray, local_cpu_slots

    slots = local_cpu_slots(plan.space.workers * plan.concurrency, plan.space.cpus_per_worker)
    cache = os.environ.get(CACHE_ENV)
    try:
        init_local_ray(slots, dashboard=dashboard or not in_actor(plan),
                       runtime_env={"env_vars": {CACHE_ENV: cache}} if cache else None)
    except Exception as err:
        raise PlatformError(f"could not start a local Ray: {one_line(err)}") from err


def import_driver_modules() -> None:
    """What the study's driver runs once Ray is up: MLflow (with SQLAlchemy and Alembic), Tune, Optuna, the
    recorder and the summary (~2.5 s of imports here, on the way to the first trial)."""
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    from mlflow.tracking import MlflowClient  # noqa: F401

    import study.summary  # noqa: F401
    import study.tracking  # noqa: F401
    import study.tuner  # noqa: F401


def open_store_beside_ray(tracking_uri: str, ray_failed: threading.Event) -> Path | None:
    """Import the driver's modules, then open a SQLite MLflow store — creating its tables: ~1.2 s of Alembic
    migrations here — unless Ray has failed already; returns the database file when this created it."""
    from study.mlflow_store import check_tracking_uri, sqlite_file

    import_driver_modules()
    database = sqlite_file(tracking_uri)
    if ray_failed.is_set() or database is None:
        return None
    created = not database.exists()
    # Its two INFO lines on creating tables ("Creating initial MLflow database tables...") would print beside a Ray
    # that fails to start, whose error must be the only line.
    tables = logging.getLogger("mlflow.store.db.utils")
    level = tables.level
    tables.setLevel(logging.WARNING)
    try:
        check_tracking_uri(tracking_uri)  # MLflow keeps the opened store for the same URI: `run` reuses it
    finally:
        tables.setLevel(level)
    return database if created else None


def start_local_ray_beside(plan: StudyPlan, tracking_uri: str, dashboard: bool) -> None:
    """Start the local Ray while another thread imports the driver's modules and opens the study's MLflow store
    (`open_store_beside_ray`); a Ray that cannot start, or a stop while it starts, leaves no database it created.

    Ray starts in this (the main) thread: it asks the kernel to kill its daemons when the thread that started them
    ends (`PR_SET_PDEATHSIG`). Everything the start imports is imported before the other thread begins
    (`import_ray_start`), so the start imports nothing beside it: two threads importing modules that import each
    other can meet a partly initialised one (CI, before: `study.tuner` imported in that thread beside
    `trainables.launch` gave "cannot import name '_CheckpointManager' from partially initialized module
    'ray.train._internal.checkpoint_manager'")."""
    from concurrent.futures import ThreadPoolExecutor

    from trainables.local_ray import import_ray_start

    import_ray_start()
    ray_failed = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        opened = pool.submit(open_store_beside_ray, tracking_uri, ray_failed)
        try:
            start_local_ray(plan, dashboard)
        except (PlatformError, KeyboardInterrupt, SystemExit):  # Ray failed, or a stop came while it started
            ray_failed.set()
            with contextlib.suppress(Exception):  # Ray's error is the one to report
                database = opened.result()
                if database is not None:
                    database.unlink(missing_ok=True)
            raise
        opened.result()


def fit_to_cluster(plan: StudyPlan, address: str | None, wait: bool) -> None:
    """Fail fast if no trial can ever be placed; else size the default concurrency to the cluster."""
    space = plan.space
    shape = TrialShape(space.workers, space.cpus_per_worker, space.gpus_per_worker)
    nodes, where = (ray_nodes(), f"the Ray cluster at {address}") if address else (local_nodes(shape), "this machine")
    plan.capacity = fit_trials(nodes, shape, where, wait)


def obtain_data(plan: StudyPlan, data_url: str | None) -> Dataset | Catalog:
    """The dataset on disk (downloaded once if absent), before any trial starts: decoded (cached), or, for
    datasets a trial can stream, listed (decoded later only if it goes to the object store, `place_data`);
    every variant's validation split and batch checked against its size."""
    shared = plan.shared()
    if is_uri(shared.data_dir):  # a bucket is never downloaded into, and streams only what trainables.stream reads
        check_data_dir(shared.dataset, shared.data_dir)
    else:
        ensure_dataset(shared.dataset, shared.data_dir, data_url)
    if shared.dataset in STREAMED:
        data = build_catalog(shared.dataset, shared.data_dir, shared.image_size)
    else:
        data = load_dataset(shared.dataset, shared.data_dir, shared.image_size, say_decoding)
    check_splits(plan, len(data.train))
    return data


def say_decoding(root: Path, entry: Path) -> None:
    """The one wait of a first study on a copy of the data, said before it starts (CIFAR-10's 60,000 PNGs from
    parquet: 7.3 s on 2 cores; an image folder: longer)."""
    print(f"data: decoding {root} once for this copy of the data; later studies read {entry}", flush=True)


def data_path_for(plan: StudyPlan, data: Dataset | Catalog, store: int | None) -> tuple[str, str]:
    """("memory" or "stream", why): `data_path` as set, else memory when the decoded dataset fits the
    smallest node's object store and a memory loader reads its layout."""
    shared = plan.shared()
    room = f"the smallest node's object store ({store / 2**30:.2f} GiB)" if store else "the object store"
    if isinstance(data, Dataset):
        return "memory", f"{shared.dataset} is decoded into memory: {data.nbytes() / 2**30:.2f} GiB fits {room}"
    size = f"{data.decoded_bytes() / 2**30:.2f} GiB decoded at {data.image_size} px"
    if shared.data_path != "auto":
        return shared.data_path, f"data_path={shared.data_path} ({size})"
    if shared.dataset in SOURCE_IMAGES:
        return "stream", f"{shared.dataset}'s augmentation reads the source images ({size})"
    if is_uri(data.root) or data.train.sharded:
        return "stream", f"{'a URI' if is_uri(data.root) else 'shards'} ({size})"
    if store is not None and data.decoded_bytes() > store:
        return "stream", f"{size} > {room}"
    return "memory", f"{size} fits {room}"


def place_data(plan: StudyPlan, data: Dataset | Catalog):
    """Put the study's data in Ray's object store once: decoded arrays (every trial reads them zero-copy, one
    copy per node), or, streamed, the catalog of images each trial reads and decodes itself."""
    import ray

    nodes = ray_nodes()
    images = (len(data.train), len(data.test))
    if isinstance(data, Dataset):
        data = trials_share(plan, data)
    path, why = data_path_for(plan, data, smallest_store(nodes))
    shared = plan.shared()
    if path == "stream":
        if shared.task == "bt":
            raise InputError(f"data_path: Barlow Twins trains from memory, but {why}; train on less "
                             "(--set limit=N) or give the nodes more object store")
        cpus = plan.space.cpus_per_worker
        print(f"data: streaming {len(data.train):,} + {len(data.test):,} images from {data.root}: {why}; each "
              f"trial decodes its images every epoch with its own CPUs ({cpus:g} per worker: "
              f"{decoders_for(cpus)} decode process(es) beside the training one)", flush=True)
        return ray.put(data.to_arrays())
    if isinstance(data, Catalog):
        try:
            data = trials_share(plan, load_dataset(shared.dataset, shared.data_dir, shared.image_size, say_decoding))
        except ValueError as err:  # the layout or an image, found decoding: the user's input
            raise InputError(str(err)) from None
    check_fits_object_store(data.nbytes(), nodes)
    arrays = data.to_arrays()
    placed = (len(data.train), len(data.test))
    of = f" of {images[0]:,} + {images[1]:,}" if placed != images else ""
    print(f"data: {placed[0]:,} + {placed[1]:,}{of} images in Ray's object store: {why}", flush=True)
    return ray.put(arrays)


def trials_share(plan: StudyPlan, data: Dataset) -> Dataset:
    """Only the images the study's trials read, where they all read the same `limit` (and `test_limit`) subset:
    a trial's `balanced_subset` of that subset is the subset itself, so its splits are those it would draw from
    every image (the demo: 3,000 + 1,000 of CIFAR-10's 50,000 + 10,000: 12 MB of the object store, not 184)."""
    from study.console import searched_keys  # Ray Tune: imported by now, beside Ray's start (import_driver_modules)

    searched = set(searched_keys(plan))
    drawn: list[TrialConfig] = []
    check_variants(plan, drawn.append)

    def common(key: str) -> int | None:
        values = {getattr(cfg, key) for cfg in drawn}
        return values.pop() if len(values) == 1 and (key not in searched or key in plan.overrides) else None

    return data.limited(common("limit"), common("test_limit"))


def check_splits(plan: StudyPlan, train_images: int) -> None:
    """Each variant's held-out split leaves it training images, and its batch fits them (ValueError naming
    the setting, as the trial itself would raise once started)."""
    from trainables.batches import Shard

    def fits(cfg: TrialConfig) -> None:
        pool = min(cfg.limit or train_images, train_images)
        held = cfg.validation_size(pool)
        check_validation_size(held, pool)
        Shard(pool - held, cfg.batch_size, 0, plan.space.workers, cfg.seed)

    check_variants(plan, fits)


def check_writable(storage: Location) -> None:
    """InputError unless a probe file can be written to the study's storage and deleted (`Location.unwritable`)."""
    why = storage.unwritable()
    if why:
        raise InputError(f"--storage: cannot write to {storage} ({why})")


def prepare(args: argparse.Namespace) -> tuple[StudyPlan, StudyRecord]:
    """Resolve the plan and the study's record (new, or saved by the study to resume); writes nothing but a
    cut-short Tune state of the study to resume, restored from its staging copy."""
    from study.mlflow_store import check_tracking_uri, default_tracking_uri

    if args.max_failures < -1:
        raise InputError(f"--max-failures: must be >= -1 (-1: without limit), got {args.max_failures}")
    if args.resume_errored and not args.resume:
        raise InputError("--resume-errored: restarts the errored trials of a study that --resume continues; "
                         "add --resume")
    storage = Location.of(args.storage)
    if (why := unwritable_cache()) is not None:
        raise InputError(why)
    if args.resume:
        given = [flag for flag in STUDY_FLAGS if getattr(args, flag.removeprefix("--").replace("-", "_")) not in (None, [])]
        if given:
            raise InputError(f"{given[0]}: --resume continues a study as it was started (its study.json); start a new "
                             f"study to change it")
        check_writable(storage)  # before reading it: a remote store that never answers is waited for once
        record = StudyRecord.latest(storage, args.space)
        if record is None:
            raise InputError(f"--resume: no study of space {args.space!r} under {storage}")
        record.hold()  # before its Tune state is repaired: a study running elsewhere on this machine is left alone
        check_in_place(record)
        if record.study_dir.is_local:
            for line in repair_tune_state(Path(record.study_dir.uri)):
                print(line, flush=True)
        return make_plan(record.space, dict(record.overrides)), record
    seed = DEFAULT_SEED if args.seed is None else args.seed
    plan = make_plan(args.space, parse_sets(args.set), num_samples=args.num_samples, epochs=args.epochs,
                     seed=seed, data_dir=args.data_dir, confirm=args.confirm, seeds=args.seeds,
                     max_seeds=args.max_seeds,
                     variants=args.variants.split(",") if args.variants else None)
    check_writable(storage)
    tracking_uri = args.tracking_uri or default_tracking_uri(storage)
    if args.tracking_uri:
        check_tracking_uri(tracking_uri)
    return plan, StudyRecord.new(storage, args.space, overrides=plan.given, seed=seed,
                                 tracking_uri=tracking_uri, experiment=args.experiment or args.space)


def check_in_place(record: StudyRecord) -> None:
    """InputError unless a local study is resumed where it started: moved away from its SQLite store, it re-created
    an empty one where that had been and recorded a second parent run there, its report failing; copied, it wrote
    into the original's store. MLflow names a study's folders in its runs and artifacts (as absolute paths)."""
    from study.mlflow_store import check_tracking_uri, sqlite_file
    from trainables.records import STUDY_PATH_TAG

    database = sqlite_file(record.tracking_uri)
    if record.study_dir.is_local and database is not None and not database.exists():
        raise InputError(f"--resume: study {record.name} names the MLflow store {record.tracking_uri}, which does not "
                         f"exist (moved or deleted?): resume it where it started, or start a new study")
    client = check_tracking_uri(record.tracking_uri)
    if not record.study_dir.is_local or record.parent_run_id is None:
        return
    try:
        started_in = client.get_run(record.parent_run_id).data.tags.get(STUDY_PATH_TAG, "")
    except Exception:  # noqa: BLE001 - MLflow raises its own types for a run it does not hold
        raise InputError(f"--resume: study {record.name}'s MLflow run {record.parent_run_id} is not in "
                         f"{record.tracking_uri}: resume it where it started, or start a new study") from None
    if started_in and (Path(started_in) / STUDY_FILE).is_file() and not os.path.samefile(started_in,
                                                                                        record.study_dir.uri):
        raise InputError(f"--resume: study {record.study_dir} is a copy of {started_in}, whose MLflow runs and "
                         f"artifacts it would write to ({record.tracking_uri}): resume the original")


def named_transfer(args: argparse.Namespace, plan: StudyPlan, record: StudyRecord):
    """The batch-size transfer (`study.transfer`) from the `--transfer-from` experiments, checked before anything
    starts: TransferError (an InputError's kind: a ValueError) for one that gives no fit; None without the flag."""
    if args.resume or not args.transfer_from:
        return None
    from study.mlflow_store import check_tracking_uri
    from study.transfer import NO_TRANSFER, plan_transfer as fit_transfer  # MLflow, SciPy: only with a store to read

    if args.transfer_from == NO_TRANSFER:
        return None
    named = [name for name in args.transfer_from.split(",") if name]
    return fit_transfer(check_tracking_uri(record.tracking_uri), named, plan, explicit=True)


def may_transfer_by_default(args: argparse.Namespace, record: StudyRecord) -> bool:
    """Whether a new study without `--transfer-from` looks for earlier batch sizes in its own experiment: not in
    a SQLite store that does not exist yet."""
    from study.mlflow_store import sqlite_file

    database = sqlite_file(record.tracking_uri)
    return not args.resume and not args.transfer_from and (database is None or database.exists())


def default_transfer(client, plan: StudyPlan, record: StudyRecord):
    """The transfer from the study's own experiment, where it holds two batch sizes or more of the optimizer, else
    None. It never rejects an input, so it is read once the store is open (its MLflow import beside Ray's start)."""
    from study.transfer import plan_transfer as fit_transfer

    return fit_transfer(client, [record.experiment], plan, explicit=False)


def run(args: argparse.Namespace, plan: StudyPlan, record: StudyRecord, data: Dataset | Catalog,
        transfer=None, clock=None, transfer_by_default: bool = False) -> int:
    from study.mlflow_store import check_tracking_uri, dataset_input, experiment_id, log_dataset, start_parent_run
    from study.tracking import StudyRecorder
    from study.clock import StudyClock
    from study.summary import record_session, report_stages, summarize, untrained, write_report
    from study.tuner import fit_until_stopped, new_tuner, restored_tuner

    started, cpu_started = time.time(), time.process_time()
    dataset = dataset_input(plan.shared().dataset, data, plan.shared().data_dir)
    data_ref = place_data(plan, data)  # before anything is recorded: a dataset that fails to decode is bad input
    client = check_tracking_uri(record.tracking_uri)
    if transfer_by_default:
        transfer = default_transfer(client, plan, record)
    exp_id = experiment_id(client, record.experiment, record.artifact_root)
    if not args.resume:
        record.claim()
        record.hold()
    record.parent_run_id = start_parent_run(
        client, exp_id, str(record.study_dir), plan.space.describe() | {"overrides": plan.overrides},
        {"space": record.space, "command": "python -m study.run " + shlex.join(sys.argv[1:])})
    record.save()
    log_dataset(client, record.parent_run_id, dataset)
    print(f"study {record.name}: space {record.space}, {plan.space.total_samples} search trials "
          f"({plan.space.num_samples} per variant), "
          f"MLflow experiment {record.experiment!r} run {record.parent_run_id}", flush=True)
    if transfer is not None:
        record_transfer(client, record.parent_run_id, transfer)

    if args.resume and reached_tune(record.study_dir):
        tuner = restored_tuner(plan, record, args.max_failures, data_ref, errored=args.resume_errored)
    else:  # a new study, or one stopped before Tune's first snapshot (no trial ran): its parent run goes on
        recorder = StudyRecorder(record.tracking_uri, exp_id, record.parent_run_id, plan.max_epoch,
                                 str(record.train_dir), dataset)
        tuner = new_tuner(plan, record, [recorder], args.max_failures, data_ref,
                          first=transfer.first_trials() if transfer else [])
    results, stopped_by = fit_until_stopped(tuner)
    if stopped_by is not None:
        record_session(client, record.parent_run_id, time.time() - started, time.process_time() - cpu_started)
        return stopped_for_resume(args, record, client, stopped_by)
    report_stages(results, plan, record, client)
    failure = untrained(results)
    summarize(plan, record, client, exp_id, started, clock or StudyClock(), cpu_started,
              status="FAILED" if failure else "FINISHED")
    write_report(record)
    if failure:
        raise PlatformError(failure)
    return 0


def stopped_for_resume(args: argparse.Namespace, record: StudyRecord, client, signum: int) -> int:
    """Ctrl+C (or a `study.signals.STOP_SIGNALS` one) stopped the study with its state saved: its parent run closed as
    KILLED (--resume reopens it), no report, the command that continues it, and the exit status a shell gives a
    command the signal ended."""
    client.set_terminated(record.parent_run_id, "KILLED")
    print(f"{interrupted_by(signum)}: study {record.name} stopped with its state saved; continue it with: "
          f"{resume_command(args)}", file=sys.stderr, flush=True)
    return stopped_status(signum)


def close_failed(record: StudyRecord) -> None:
    """The parent run of a study that stopped on an error, FAILED (as MLflow ends a run whose code raised) where it is
    still open and its store answers; left RUNNING otherwise (a full disk, a server gone), which `--resume` reopens
    all the same."""
    from study.mlflow_store import check_tracking_uri

    if record.parent_run_id is None:
        return
    try:
        client = check_tracking_uri(record.tracking_uri)
        if client.get_run(record.parent_run_id).info.status == "RUNNING":
            client.set_terminated(record.parent_run_id, "FAILED")
    except Exception:  # noqa: BLE001 - the study's own error is the one to report
        pass


def interrupted_by(signum: int) -> str:
    """"interrupted", and by which signal unless it was Ctrl+C's."""
    return "interrupted" if signum == signal.SIGINT else f"interrupted by {signal.Signals(signum).name}"


def interrupted_before(args: argparse.Namespace, signum: int) -> int:
    """Stopped (Ctrl+C, a `study.signals.STOP_SIGNALS` one) before this process opened the study's parent run:
    nothing recorded, a resumed study left as it was."""
    print(f"{interrupted_by(signum)} before the study started: nothing was recorded" if not args.resume else
          f"{interrupted_by(signum)} before the study went on; continue it with: {resume_command(args)}",
          file=sys.stderr, flush=True)
    return stopped_status(signum)


def interrupted_outside_the_fit(args: argparse.Namespace, record: StudyRecord, signum: int) -> int:
    """Stopped while Ray starts, or after the trials: as Tune's own stop would stop it while the parent run is open
    (`--resume` then does what is left); once it is finished, only its report is missing."""
    from study.mlflow_store import check_tracking_uri
    from study.summary import report_command

    if record.parent_run_id is None:
        return interrupted_before(args, signum)
    client = check_tracking_uri(record.tracking_uri)
    status = client.get_run(record.parent_run_id).info.status
    if status == "RUNNING":
        return stopped_for_resume(args, record, client, signum)
    if status != "FINISHED":  # a --resume stopped before it reopened the run
        return interrupted_before(args, signum)
    print(f"{interrupted_by(signum)} while its report was built: study {record.name} is finished and recorded; build "
          f"the report with: {report_command(record)}", file=sys.stderr, flush=True)
    return stopped_status(signum)


def resume_command(args: argparse.Namespace) -> str:
    """The command that continues this study."""
    return shlex.join(["python", "-m", "study.run", "--space", args.space, "--storage", args.storage, "--resume"]
                      + (["--address", args.address] if args.address else []))


def out_of_space(args: argparse.Namespace, record: StudyRecord, full: BaseException) -> str:
    """What a study stopped by a full disk says: where, what is kept, and how to go on once there is room."""
    what = getattr(full, "strerror", None) or " ".join(str(full).split()) or "no space left on the device"
    where = f" writing {full.filename}" if getattr(full, "filename", None) else ""
    return (f"{what}{where}: the study stopped. Its finished trials are "
            f"in MLflow, its state as of its last snapshot in {record.study_dir}; free some space (or raise the "
            f"quota), then continue it with: {resume_command(args)}")


def record_transfer(client, run_id: str, transfer) -> None:
    """The transfer's fits on the study's parent run (`TRANSFER_ARTIFACT`, and each fit's numbers as params), and
    on the console."""
    from mlflow.entities import Param

    from trainables.records import TRANSFER_ARTIFACT

    client.log_dict(run_id, transfer.to_json(), TRANSFER_ARTIFACT)
    client.log_batch(run_id, params=[Param(k, v) for k, v in transfer.params().items()])
    for fit in transfer.fits:
        print(fit.line(), flush=True)


@dataclass(frozen=True)
class Failure:
    """A study's exit status and its one `error:` line, said last: after Ray's shutdown, whose own late lines (the
    "Unhandled error" of a trial's future Tune dropped when the driver crashed) once followed it."""
    code: int
    message: str

    def said(self) -> int:
        """Print the line; the status to exit with."""
        print(f"error: {self.message}", file=sys.stderr, flush=True)
        return self.code


def main(argv: list[str] | None = None) -> int:
    set_library_defaults()
    args = parse_args(argv)
    if args.list:
        list_spaces()
        return 0
    if not args.space:
        return Failure(INPUT_ERROR, "--space is required (see --list)").said()
    import ray

    from study.clock import StudyClock

    ray_was_up, clock, stops = ray.is_initialized(), StudyClock(), StopSignals()
    stops.take()
    try:
        outcome = _checked_run(args, clock, stops)
    finally:
        stops.give_back()
        release_held()
        if not ray_was_up and ray.is_initialized():  # leave an in-process caller's process as it was
            ray.shutdown()
        line = clock.line()  # once: its "after the last trial" is read from the clock as it is called
        if line:
            print(line, flush=True)
    return outcome.said() if isinstance(outcome, Failure) else outcome


def _checked_run(args: argparse.Namespace, clock, stops: StopSignals) -> int | Failure:
    try:  # cheapest checks first: settings and services, the cluster, then the data (maybe a download)
        plan, record = prepare(args)
        check_address(args.address)
        if args.address:
            with through_ray_start(stops):
                join_cluster(args.address)
            check_storage_reaches_nodes(record.storage, args.shared_storage)
        transfer = named_transfer(args, plan, record)
        by_default = may_transfer_by_default(args, record)  # before this study's own Ray start creates the store
        fit_to_cluster(plan, args.address, args.wait_for_resources)
        data = obtain_data(plan, args.data_url)
    except PlatformError as err:
        return Failure(PLATFORM_ERROR, str(err))
    except (InputError, ValueError) as err:  # ValueError: a setting or the data rejected by their own checks
        return Failure(INPUT_ERROR, str(err))
    except KeyboardInterrupt as stop:  # e.g. while a first study decodes its data
        return interrupted_before(args, signal_of(stop))
    try:
        if not args.address:
            with through_ray_start(stops):
                start_local_ray_beside(plan, record.tracking_uri, args.ray_dashboard)
        return run(args, plan, record, data, transfer, clock, by_default)
    except KeyboardInterrupt as stop:  # outside Tune's fit, which takes Ctrl+C itself: Ray's start, the report
        return interrupted_outside_the_fit(args, record, signal_of(stop))
    except PlatformError as err:
        close_failed(record)
        return Failure(PLATFORM_ERROR, str(err))
    except InputError as err:  # found once Ray is up (the dataset larger than its object store)
        close_failed(record)
        return Failure(INPUT_ERROR, str(err))
    except Exception as err:  # the study crashed: say what, keep the traceback out of the user's way
        if (full := full_disk(err)) is not None:  # its store is full too: the parent run stays RUNNING for --resume
            return Failure(PLATFORM_ERROR, out_of_space(args, record, full))
        close_failed(record)
        log, written = record.error_log, False
        try:
            if record.study_dir.exists():
                log.write_text(traceback.format_exc())
                written = True
        except OSError:
            pass
        where = f" (traceback in {log})" if written else ""
        return Failure(PLATFORM_ERROR, f"the study failed: {one_line(err)}{where}")


if __name__ == "__main__":
    sys.exit(main())
