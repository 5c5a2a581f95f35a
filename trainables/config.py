"""`TrialConfig`: every setting of one training run, checked before any work starts.

Built from a flat dict (what Ray Tune samples and `--set` overrides). Keys that are not fields are
hyperparameters of the chosen optimizer (`momentum`, `weight_decay`, `lam`, `clip_lower`, …) and
are checked by `optim.validate_hparams`; settings an optimizer's `OptimSpec` takes in epochs
(TVLARS' `delay_epochs`, d_e) are converted to its steps.
Every error is a ValueError whose message starts with the offending key.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from typing import Any

from optim import SCHEDULERS
from optim.factory import spec_of, trial_hparams, validate_hparams
from trainables.batches import BN_SYNC, MICRO_AUTO
from trainables.data import STREAMED, check_data_dir
from trainables.models import INITS, check_model
from trainables.folders import is_uri
from trainables.stream import DATA_PATHS, SOURCE_IMAGES
from trainables.records import SETTING_NAMES, TrialSettings

TASKS = ("clf", "bt")
LR_SCALINGS = ("sqrt", "linear")
_CHOICES = {
    "task": TASKS, "init": INITS, "data_path": DATA_PATHS, "scheduler": SCHEDULERS, "lr_scaling": LR_SCALINGS,
    "device": ("auto", "cpu", "cuda"), "precision": ("auto", "fp32", "bf16"), "clars_norms": ("exact", "microbatch"),
}
_AT_LEAST_ONE_OR_WORD = {"micro_batch_size": MICRO_AUTO, "bn_group": BN_SYNC}
_AT_LEAST_ONE = {"batch_size", "epochs", "telemetry_every", "eval_every", "checkpoint_every", "base_batch", "linear_epochs", "clars_microbatches",
                 "threads", "limit", "test_limit", "image_size", "linear_batch_size", "width"}
VALIDATION_SHARE = 10  # by default a tenth of the training images is held out (CIFAR: 5,000 of 50,000)
_POSITIVE = {"bt_lambda", "linear_lr", "base_lr", "poly_power", "divergence_factor"}


@dataclass
class TrialConfig(TrialSettings):
    """A trial's settings (`trainables.records.TrialSettings`), each checked: built with `from_dict`."""

    @classmethod
    def from_dict(cls, values: dict[str, Any], check_data: bool = True) -> "TrialConfig":
        known = {k: v for k, v in values.items() if k in SETTING_NAMES}
        extra = {k: v for k, v in values.items() if k not in SETTING_NAMES}
        extra.update(values.get("optimizer_params") or {})
        hints = typing.get_type_hints(cls)
        for key, value in known.items():
            _check_type(key, value, hints[key])
        config = cls(**known, optimizer_params=extra)
        config.validate(check_data)
        return config

    def validate(self, check_data: bool = True) -> None:
        for key, choices in _CHOICES.items():
            if getattr(self, key) not in choices:
                raise ValueError(f"{key}: unknown {getattr(self, key)!r}; choose one of {', '.join(choices)}")
        check_model(self.model)
        self._check_data_path()
        for key in _AT_LEAST_ONE:
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        for key, word in _AT_LEAST_ONE_OR_WORD.items():
            value = getattr(self, key)
            if isinstance(value, str) and value != word or isinstance(value, int) and value < 1:
                raise ValueError(f"{key}: must be a number >= 1 or {word!r}, got {value!r}")
        if self.task == "bt" and (self.micro_batch_size, self.bn_group) != (None, None):
            raise ValueError("micro_batch_size: Barlow Twins' loss needs the whole batch at once; micro_batch_size "
                             "and bn_group apply to classification (task=clf) only")
        if self.task == "bt" and self.eval_every != 1:
            raise ValueError("eval_every: Barlow Twins evaluates every linear-evaluation epoch; it applies to "
                             "classification (task=clf) only")
        for key in _POSITIVE:
            if getattr(self, key) is not None and not getattr(self, key) > 0:
                raise ValueError(f"{key}: must be positive, got {getattr(self, key)}")
        if self.val_size is not None and self.val_size < 0:
            raise ValueError(f"val_size: must be >= 0, got {self.val_size}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing: must be in [0, 1), got {self.label_smoothing}")
        if (self.lr is None) == (self.base_lr is None):
            raise ValueError("lr: give exactly one of lr (explicit) or base_lr (scaled by lr_scaling)")
        if self.scheduler == "warmup_cosine" and not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"warmup_epochs: must be in [0, epochs={self.epochs}), got {self.warmup_epochs}")
        if self.task == "bt" and not all(p.isdigit() and int(p) > 0 for p in self.bt_projector.split("-")):
            raise ValueError(f"bt_projector: expected layer widths like '4096-4096-4096', got {self.bt_projector!r}")
        validate_hparams(self.optimizer, self.optimizer_hyperparameters(steps_per_epoch=1))
        if check_data:
            check_data_dir(self.dataset, self.data_dir)

    def _check_data_path(self) -> None:
        """Which datasets each data path can read (`trainables.stream`)."""
        if self.data_path == "stream" and self.dataset not in STREAMED:
            raise ValueError(f"data_path: {self.dataset} is decoded into memory; streaming reads "
                             f"{' or '.join(STREAMED)} (folders or shards)")
        if self.data_path == "memory" and (self.dataset in SOURCE_IMAGES or is_uri(self.data_dir)):
            why = "its augmentation (RandomResizedCrop) reads the source images" if self.dataset in SOURCE_IMAGES \
                else f"{self.data_dir} is a URI"
            raise ValueError(f"data_path: {self.dataset} is streamed ({why}); use data_path=stream or auto")
        if self.task == "bt" and (self.data_path == "stream" or self.dataset in SOURCE_IMAGES):
            raise ValueError("data_path: Barlow Twins trains from data decoded in memory; streaming is for "
                             "classification (task=clf)")

    def validation_size(self, pool: int) -> int:
        """How many of the `pool` training images (after `limit`) are held out for validation."""
        return pool // VALIDATION_SHARE if self.val_size is None else self.val_size

    def learning_rate(self) -> float:
        if self.lr is not None:
            return float(self.lr)
        ratio = self.batch_size / self.base_batch
        return float(self.base_lr) * (math.sqrt(ratio) if self.lr_scaling == "sqrt" else ratio)

    def optimizer_hyperparameters(self, steps_per_epoch: int) -> dict[str, Any]:
        """Keyword arguments for `optim.build_optimizer`, settings given in epochs converted to steps
        (TVLARS' delay_epochs → delay_steps, by the optimizer's `OptimSpec`)."""
        unknown = sorted(set(self.optimizer_params) - trial_hparams(self.optimizer) - {"lr"})
        if unknown:
            raise ValueError(f"{unknown[0]}: not a trial setting nor a hyperparameter of optimizer "
                             f"{self.optimizer!r}")
        return {**spec_of(self.optimizer).to_steps(self.optimizer_params, steps_per_epoch), "lr": self.learning_rate()}


def _check_type(key: str, value: Any, hint: Any) -> None:
    allowed = typing.get_args(hint) or (hint,)
    if value is None and type(None) in allowed:
        return
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return
    if not isinstance(value, tuple(a for a in allowed if isinstance(a, type))) or (
            isinstance(value, bool) and bool not in allowed):
        names = " or ".join(getattr(a, "__name__", str(a)) for a in allowed)
        raise ValueError(f"{key}: expected {names}, got {value!r}")
