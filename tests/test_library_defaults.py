"""The settings `trainables.environment` gives Ray's libraries reach the processes that read them."""

from __future__ import annotations

from ray.train.v2._internal.constants import ENV_VARS_TO_PROPAGATE as TRAIN_PROPAGATES
from ray.train.v2._internal.constants import HEALTH_CHECK_INTERVAL_S_ENV_VAR
from ray.tune.execution.class_cache import ENV_VARS_TO_PROPAGATE as TUNE_PROPAGATES

from trainables.environment import LIBRARY_DEFAULTS


def test_train_poll_interval_reaches_the_train_controller():
    """Train's controller reads its poll interval in its own process: Tune hands the driver's value to its trial
    actors (a multi-worker trial's TorchTrainer runs there) and Train to its controller. A Ray upgrade that renames
    the variable or stops handing it on fails here."""
    assert float(LIBRARY_DEFAULTS[HEALTH_CHECK_INTERVAL_S_ENV_VAR]) == 0.5
    assert HEALTH_CHECK_INTERVAL_S_ENV_VAR in TUNE_PROPAGATES and HEALTH_CHECK_INTERVAL_S_ENV_VAR in TRAIN_PROPAGATES
