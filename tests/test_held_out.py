"""Validation hygiene: trials hold out a stratified validation split, and what makes a study's choices —
Optuna and ASHA — is never shown a test-set metric, though every trial reports and records one."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from mlflow.tracking import MlflowClient
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from study.run import main
from trainables.data import ImageData, stratified_split

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _images(labels: list[int]) -> ImageData:
    n = len(labels)
    return ImageData(torch.arange(n).view(n, 1, 1, 1).expand(n, 3, 2, 2).to(torch.uint8), torch.tensor(labels),
                     [str(c) for c in range(max(labels) + 1)])


def test_the_validation_split_is_stratified_disjoint_and_fixed_by_its_seed():
    labels = [0] * 60 + [1] * 30 + [2] * 10  # shares 60 / 30 / 10 %
    data = _images(labels)
    rest, held = stratified_split(data, 20, seed=5)
    assert torch.bincount(held.labels).tolist() == [12, 6, 2]  # each class keeps its share
    assert len(rest) == 80 and torch.bincount(rest.labels).tolist() == [48, 24, 8]
    ids = lambda split: set(split.images[:, 0, 0, 0].tolist())  # noqa: E731 - each image's own index
    assert ids(rest).isdisjoint(ids(held)) and len(ids(rest) | ids(held)) == 100
    assert ids(stratified_split(data, 20, seed=5)[1]) == ids(held)
    assert ids(stratified_split(data, 20, seed=6)[1]) != ids(held)
    with pytest.raises(ValueError, match=r"val_size: must be in \[0, 100\) for 100 training images, got 100"):
        stratified_split(data, 100, seed=0)


def _spy(monkeypatch, cls: type, method: str, seen: list[tuple[str, dict[str, Any]]]) -> None:
    """Record every result dict `cls.method` is called with, then call it."""
    original = getattr(cls, method)

    def spy(self, *args, **kwargs):
        seen.extend((f"{cls.__name__}.{method}", dict(a)) for a in (*args, *kwargs.values()) if isinstance(a, dict))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, spy)


def test_the_searcher_and_asha_receive_no_test_metric(tmp_path, cifar10_dir, data_cache, monkeypatch):
    seen: list[tuple[str, dict[str, Any]]] = []
    for cls in (OptunaSearch, ASHAScheduler):  # the study's own classes call these through super()
        for method in ("on_trial_result", "on_trial_complete"):
            _spy(monkeypatch, cls, method, seen)
    monkeypatch.setenv("LAYERWISE_CACHE", data_cache)
    code = main(["--space", "demo", "--storage", str(tmp_path), "--data-dir", cifar10_dir, "--num-samples", "1",
                 "--confirm", "0", "--set", "epochs=2", "--set", "limit=600", "--set", "val_size=100",
                 "--set", "test_limit=200", "--set", "batch_size=100", "--set", "grace_period=1", "--set", "eval_every=1"])
    assert code == 0
    callers = {who for who, _ in seen}
    assert callers == {f"{cls.__name__}.{m}" for cls in (OptunaSearch, ASHAScheduler)
                       for m in ("on_trial_result", "on_trial_complete")}, callers
    epochs = [result for _, result in seen if "epoch" in result]
    assert epochs and all("val_top1" in r for r in epochs)  # they select on the validation split ...
    assert not {k for _, r in seen for k in r if k.startswith("test_")}  # ... and never see the test set
    # while every trial did report its test metrics, which MLflow recorded per epoch
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    trials = [r for r in client.search_runs([client.get_experiment_by_name("demo").experiment_id])
              if "trial_id" in r.data.tags]
    assert len(trials) == 3
    for run in trials:
        assert len(client.get_metric_history(run.info.run_id, "test_top1")) >= 1
        assert len(client.get_metric_history(run.info.run_id, "val_top1")) >= 1
        assert run.data.params["val_size"] == "100" and run.data.params["split_seed"] == "0"
