"""The contract between the packages, importing nothing of ours: one trial's settings (`TrialSettings`, checked
by `trainables.config.TrialConfig`), its statuses, and the names of what it leaves behind — checkpoint
files, MLflow tags, the metrics and result keys more than one package reads. Every package imports these
names; none spells them again (tests/test_records.py greps for copies).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

try:
    from enum import StrEnum
except ImportError:  # Python 3.10 (pyproject allows it): the same behaviour, written out
    class StrEnum(str, Enum):  # type: ignore[no-redef]
        def __str__(self) -> str:
            return str(self.value)


class TrialStatus(StrEnum):
    """A trial's status: in each epoch's report (`status`), and as its MLflow run's `status` tag."""

    COMPLETED = "completed"
    STOPPED_BY_ASHA = "stopped_by_asha"
    DIVERGED = "diverged"
    ERRORED = "errored"
    RUNNING = "running"  # (the order: the budget table's columns)


class Stage(StrEnum):
    """A study's stage: search trials (TPE + ASHA) or confirm trials (the best re-run with fresh seeds)."""

    SEARCH = "search"
    CONFIRM = "confirm"


# A checkpoint directory's files (trainables.checkpoints writes them; the study and the reports read them).
STATE_FILE = "state.pt"  # model, optimizer, scheduler, next epoch, history: tensors and plain containers only
HISTORY_FILE = "history.json"  # the per-epoch reports so far
TELEMETRY_FILE = "telemetry.parquet"  # every recorded step's per-layer trust ratios (also a trial run's artifact)

# The MLflow tags of a trial run (nested under its study's parent run).
PARENT_TAG = "mlflow.parentRunId"
STUDY_PATH_TAG = "study_path"  # a study's parent run: the folder (or URI) the study started in
TRIAL_ID_TAG = "trial_id"
VARIANT_TAG = "variant"
STAGE_TAG = "stage"
STATUS_TAG = "status"  # a TrialStatus
TRANSFER_TAG = "transfer"  # a transfer-enqueued trial: which point of the batch-size transfer it is (fit, low, high)
ERROR_TAG = "error"  # an errored trial's exception line
NODE_TAG = "ray_node_id"  # the Ray node that ran the trial (its latest attempt)

# A study's local MLflow store: a SQLite file, its runs' artifacts in a folder beside it (`study.record`), which the
# reports also find there once the store has moved (`reports.artifacts`).
SQLITE_PREFIX = "sqlite:///"  # MLflow's URI of a SQLite store, before the file's absolute path
ARTIFACTS_FOLDER = "mlartifacts"


def sqlite_file(uri: str) -> Path | None:
    """The database file of a SQLite tracking URI; None for any other store."""
    return Path(uri.removeprefix(SQLITE_PREFIX)) if uri.startswith(SQLITE_PREFIX) else None


# Artifacts of a study's parent run, written by `study`, read by `reports`.
OPTUNA_JOURNAL_ARTIFACT = "optuna/optuna.journal"  # the search's Optuna study (JournalStorage file), at its end
TRANSFER_ARTIFACT = "transfer.json"  # the batch-size transfer's fits and what it enqueued (`study.transfer`)
SEARCH_VARIANT_ATTR = "variant"  # an Optuna trial's user attr: its variant (its params are named `<variant>/<key>`)
# Metrics of a study's parent run, logged by `study.summary`, read by the benches: over the span from the data's
# placement in Ray's object store to the summary, its wall seconds and the study driver's CPU-seconds (all threads),
# summed over the study's sessions (`study.summary.record_session`).
STUDY_WALL_METRIC = "wall_seconds"
DRIVER_CPU_METRIC = "driver_cpu_seconds"

# Keys of an epoch's report (also MLflow metric names) read by more than one package.
STATUS_KEY = "status"  # the epoch's TrialStatus
EPOCH_KEY = "epoch"  # 1-based
NODE_KEY = "node_id"  # the Ray node an attempt ran on (rank 0's), in its first report
MICRO_CHOSEN_KEY = "micro_batch_size_chosen"  # what micro_batch_size=auto picked (a study records it as a param)
LR_EFFECTIVE_KEY = "lr_effective"  # a trial run's param: the lr after batch scaling
DATA_WAIT_KEY = "data_wait_share"  # streamed data: the share of an epoch's training time spent waiting on decoding

# Field metadata: settings that do not make a different configuration.
RUNTIME = {"runtime": True}  # where or how fast it ran (a report groups trials across these)
REPEAT = {"repeat": True}  # the seeds: what repeats one configuration


@dataclass
class TrialSettings:
    """Every setting of one training run (its checks: `trainables.config.TrialConfig`)."""

    # what to train on
    task: str = "clf"
    dataset: str = "cifar10"
    data_dir: str | None = field(default=None, metadata=RUNTIME)  # a folder, or a URI (s3://…, gs://…) to stream
    # "memory": decoded once into Ray's object store; "stream": read and decoded by each trial every epoch;
    # "auto": memory when the decoded dataset fits the smallest node's object store (trainables.stream)
    data_path: str = field(default="auto", metadata=RUNTIME)
    image_size: int | None = None  # imagefolder/imagenet: images are decoded to this square size
    limit: int | None = None  # class-balanced training subset
    test_limit: int | None = None
    val_size: int | None = None  # training images held out for validation (stratified); None = a tenth, 0 = none
    # which images are held out (a study sets its own seed: every trial holds out the same)
    split_seed: int = field(default=0, metadata=REPEAT)
    model: str = "resnet18"
    width: int | None = None  # base width of the small CIFAR ResNets
    init: str = "kaiming_uniform"
    # how to train
    optimizer: str = "lars"
    lr: float | None = None  # explicit learning rate, or …
    base_lr: float | None = None  # … base_lr scaled from base_batch to batch_size by lr_scaling
    lr_scaling: str = "sqrt"
    base_batch: int = 256
    scheduler: str = "warmup_cosine"
    warmup_epochs: float = 5.0
    min_lr_ratio: float = 0.0
    poly_power: float = 2.0
    batch_size: int = 512  # global batch, over all workers
    # per worker: gradient accumulation; None = whole batch, or "auto"
    micro_batch_size: int | str | None = field(default=None, metadata=RUNTIME)
    bn_group: int | str | None = None  # samples per BatchNorm group (ghost BN); None = the micro-batch, or "sync"
    epochs: int = 10
    seed: int = field(default=0, metadata=REPEAT)
    label_smoothing: float = 0.0
    divergence_factor: float = 10.0  # clf: diverged once the epoch's train loss exceeds this × ln(classes)
    clars_norms: str = "exact"  # CLARS denominator: exact per-sample norms or the micro-batch approximation
    clars_microbatches: int = 8
    # Barlow Twins
    bt_projector: str = "4096-4096-4096"
    bt_lambda: float = 0.005
    linear_epochs: int = 10
    linear_lr: float = 0.3
    linear_batch_size: int | None = None  # default: batch_size
    # runtime
    telemetry_every: int = field(default=1, metadata=RUNTIME)
    eval_every: int = 1  # classification: evaluate every N epochs (and the last); ASHA's rungs must be multiples
    checkpoint_every: int = 1  # save a checkpoint every N epochs (and the last)
    device: str = field(default="auto", metadata=RUNTIME)
    precision: str = field(default="auto", metadata=RUNTIME)  # bf16 autocast on GPU, fp32 on CPU
    threads: int | None = field(default=None, metadata=RUNTIME)  # torch intra-op threads per worker
    compile: bool = field(default=False, metadata=RUNTIME)  # torch.compile the network
    optimizer_params: dict[str, Any] = field(default_factory=dict)  # the optimizer's own hyperparameters

    def to_dict(self) -> dict[str, Any]:
        """The flat form: settings and the optimizer's hyperparameters side by side."""
        flat = dataclasses.asdict(self)
        flat.update(flat.pop("optimizer_params"))
        return flat


SETTING_NAMES = frozenset(f.name for f in dataclasses.fields(TrialSettings)) - {"optimizer_params"}


def deleted_experiment(name: str, experiment_id: str, tracking_uri: str) -> str:
    """Why a deleted MLflow experiment cannot be used (MLflow refuses runs in it, and its runs are hidden), with the
    command that restores it."""
    return (f"MLflow experiment {name!r} is deleted (id {experiment_id} in {tracking_uri}); restore it with "
            f"`MLFLOW_TRACKING_URI={tracking_uri} mlflow experiments restore -x {experiment_id}`")


def not_configuration() -> frozenset[str]:
    """Settings two runs of one configuration may differ in: where/how fast they ran, and their seeds."""
    return frozenset(f.name for f in dataclasses.fields(TrialSettings) if f.metadata.get("runtime")
                     or f.metadata.get("repeat"))
