"""The batch-size transfer's fit (`study.transfer`) on earlier studies with known optima: a power law
recovered, the confirmed configuration preferred to the search's best, the enqueued trials inside the searched
range, and the inputs that give no fit rejected naming what was found."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from search_spaces.cpu import TRANSFER_LR
from study.plan import make_plan
from study.transfer import LEVEL, TransferError, fit_power_law, holds_other_batch_sizes, plan_transfer, Point
from tests.known_store import Trial, build_store
from subprocs import REPO

SLOPE, SCALE = 0.7, 0.01  # the known law: best lr = SCALE · B^SLOPE
NOISE = {128: 1.03, 256: 0.97, 512: 1.02, 1024: 0.98}  # each study's optimum off the law by a few percent
SETTING = {"task": "clf", "dataset": "cifar10", "model": "resnet8", "epochs": 6, "optimizer": "lars",
           "scheduler": "warmup_cosine", "warmup_epochs": 1.0, "momentum": 0.9, "weight_decay": 0.0005}


def best_lr(batch: int) -> float:
    return SCALE * batch ** SLOPE * NOISE[batch]


def _search(batch: int, lr: float, val: float) -> Trial:
    """A search trial whose validation top-1 is `val` (its test top-1 one point above, as known_store logs it)."""
    return Trial({**SETTING, "batch_size": batch, "lr": lr, "seed": 0}, "completed", {1: val / 2 + 1, 6: val + 1},
                 "search", f"lars_warmup_bs{batch}")


def study_at(batch: int) -> list[Trial]:
    """Search trials around the batch's optimum: the best by validation top-1 is at `best_lr(batch)`."""
    best = best_lr(batch)
    return [_search(batch, best * factor, 60.0 - 10 * abs(math.log2(factor))) for factor in (0.25, 0.5, 1.0, 2.0, 4.0)]


def store(root: Path, batches: tuple[int, ...], experiment: str = "earlier") -> MlflowClient:
    for batch in batches:  # one study per batch size, as a user runs them
        uri, _ = build_store(root, experiment, study_at(batch))
    return MlflowClient(uri)


def test_power_law_fit_recovers_the_slope_and_predicts_with_an_interval():
    points = [Point(b, best_lr(b), "s", "t", "search") for b in NOISE]
    law = fit_power_law(points, 4096)
    assert abs(law["slope"] - SLOPE) <= 0.05, law
    assert law["low"] < law["predicted"] < law["high"], law
    assert law["predicted"] == pytest.approx(SCALE * 4096 ** SLOPE, rel=0.1)
    exact = fit_power_law([Point(b, SCALE * b ** SLOPE, "s", "t", "search") for b in NOISE], 4096)
    assert exact["slope"] == pytest.approx(SLOPE, abs=1e-9) and exact["high"] / exact["low"] == pytest.approx(1.0)
    with pytest.raises(TransferError, match=r"two batch sizes or more, got batch \[512\]"):
        fit_power_law([Point(512, 1.0, "s", "t", "search"), Point(512, 1.2, "s2", "t", "search")], 1024)


def test_transfer_from_synthetic_studies_fits_the_known_law_and_enqueues_inside_the_range(tmp_path):
    client = store(tmp_path, (128, 256, 512, 1024))
    plan = make_plan("transfer_lars", {"batch_size": 2048})
    transfer = plan_transfer(client, ["earlier"], plan, explicit=True)
    (fit,) = transfer.fits
    assert (fit.variant, fit.key, fit.label, fit.target_batch) == ("lars_warmup", "lr", "LARS + warm-up", 2048)
    assert sorted(p.batch_size for p in fit.points) == [128, 256, 512, 1024]
    assert [p.value for p in sorted(fit.points, key=lambda p: p.batch_size)] == pytest.approx(
        [best_lr(b) for b in sorted(NOISE)])
    assert abs(fit.slope - SLOPE) <= 0.05, fit
    assert fit.predicted == pytest.approx(SCALE * 2048 ** SLOPE, rel=0.1) and fit.level == LEVEL
    assert fit.rules == pytest.approx({"linear": best_lr(1024) * 2, "sqrt": best_lr(1024) * math.sqrt(2)})
    first = transfer.first_trials()
    assert [tag for _, _, tag in first] == ["fit", "low", "high"]
    values = [params["lars_warmup/lr"] for _, params, _ in first]
    assert values == pytest.approx([fit.predicted, fit.low, fit.high])
    assert all(TRANSFER_LR[0] <= v <= TRANSFER_LR[1] for v in values)
    assert transfer.params()["transfer.lars_warmup.lr.slope"] == f"{fit.slope:.4g}"


def test_the_confirmed_configuration_is_the_optimum_where_a_confirm_stage_ran(tmp_path):
    confirmed = {**SETTING, "batch_size": 512, "lr": 0.9}
    trials = study_at(512) + [Trial({**confirmed, "seed": s}, "completed", {6: 50.0}, "confirm", "lars_warmup_bs512")
                              for s in (1, 2)]
    build_store(tmp_path, "earlier", trials)
    client = store(tmp_path, (128,))
    (fit,) = plan_transfer(client, ["earlier"], make_plan("transfer_lars", {"batch_size": 1024}), True).fits
    assert {p.batch_size: (p.value, p.stage) for p in fit.points} == {
        128: (pytest.approx(best_lr(128)), "search"), 512: (0.9, "confirm")}


def test_inputs_that_give_no_fit_are_one_error_naming_what_was_found(tmp_path):
    client = store(tmp_path, (512,))
    plan = make_plan("transfer_lars", {"batch_size": 1024})
    with pytest.raises(TransferError, match=r"found LARS \+ warm-up \(cifar10, resnet8\) at batch 512 only"):
        plan_transfer(client, ["earlier"], plan, explicit=True)
    assert plan_transfer(client, ["earlier"], plan, explicit=False) is None  # the default source: no transfer
    with pytest.raises(TransferError, match=r"no MLflow experiment 'absent'; this store has: .*earlier"):
        plan_transfer(client, ["absent"], plan, explicit=True)
    other = make_plan("demo", {})  # TVLARS and LARS at batch 300 on other settings: nothing of theirs was run
    with pytest.raises(TransferError, match=r"found no trials of TVLARS \(cifar10, resnet8\); LARS \+ warm-up"):
        plan_transfer(client, ["earlier"], other, explicit=True)


def test_the_default_source_is_asked_for_other_batch_sizes_before_its_trials_are_read(tmp_path):
    """The one-run queries that let a study in a store of same-batch studies skip reading their histories."""
    client = store(tmp_path, (512,))
    assert not holds_other_batch_sizes(client, ["earlier"], {512})
    assert holds_other_batch_sizes(client, ["earlier"], {1024})
    assert holds_other_batch_sizes(client, ["earlier"], {512, 1024})  # one variant at another batch is enough
    assert not holds_other_batch_sizes(client, ["absent"], {1024})
    assert not holds_other_batch_sizes(client, ["earlier"], set())
    store(tmp_path, (256,))
    assert holds_other_batch_sizes(client, ["earlier"], {512})


def test_the_command_line_rejects_an_unknown_source_before_the_study_starts(tmp_path):
    build_store(tmp_path, "earlier", study_at(512))
    out = subprocess.run([sys.executable, "-m", "study.run", "--space", "transfer_lars", "--storage", str(tmp_path),
                          "--set", "batch_size=1024", "--transfer-from", "earlier,absent"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        "error: --transfer-from: no MLflow experiment 'absent'; this store has: Default, earlier")
    assert not any(p.name.startswith("transfer_lars-") for p in tmp_path.iterdir())  # no study was started


def test_a_study_starts_its_search_from_the_transfer_and_reports_it(tmp_path, cifar10_dir, data_cache):
    """A real (tiny) batch-1,024 study of `transfer_lars` seeded from earlier studies at 128/256/512 in its own
    experiment (the default source, read once the study's Ray is starting; `--transfer-from` names others): its
    first three search trials are the prediction and the interval's ends, as the Optuna study, the MLflow runs, the
    parent run and the report all record them."""
    import json
    import os

    import optuna

    from study.optuna_store import JOURNAL_FILE, TRANSFER_ATTR, TRIAL_NAME_ATTR
    from trainables.records import TRANSFER_TAG
    from subprocs import assert_succeeds

    storage = tmp_path / "results"
    client = store(storage, (128, 256, 512))
    cmd = [sys.executable, "-m", "study.run", "--space", "transfer_lars", "--storage", str(storage), "--data-dir",
           cifar10_dir, "--experiment", "earlier", "--num-samples", "4", "--set", "batch_size=1024",
           "--set", "limit=1300", "--set", "val_size=200", "--set", "test_limit=200", "--set", "epochs=2",
           "--set", "grace_period=1"]
    out = assert_succeeds(cmd, tmp_path / "study.log", cwd=REPO, env={**os.environ, "LAYERWISE_CACHE": data_cache},
                          timeout=600).output
    assert "transfer: lars_warmup lr: 3 earlier optima at batch 128, 256, 512 → lr ∝ B^" in out, out
    (parent,) = [r for r in client.search_runs([client.get_experiment_by_name("earlier").experiment_id])
                 if "study_path" in r.data.tags and r.info.run_name.startswith("transfer_lars-")]
    recorded = json.loads(Path(client.download_artifacts(parent.info.run_id, "transfer.json", str(tmp_path))).read_text())
    (fit,) = recorded["fits"]
    assert abs(fit["slope"] - SLOPE) <= 0.05 and fit["enqueued"] == pytest.approx([fit["predicted"], fit["low"], fit["high"]])
    assert parent.data.params["transfer.lars_warmup.lr.predicted"] == f"{fit['predicted']:.4g}"
    # the Optuna study: the first three trials took the enqueued values, the fourth was drawn by TPE
    journal = next(storage.glob(f"transfer_lars-*/{JOURNAL_FILE}"))
    trials = optuna.load_study(study_name=parent.info.run_name, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal)))).trials
    assert [t.user_attrs.get(TRANSFER_ATTR) for t in trials] == ["fit", "low", "high", None]
    assert [t.params["lars_warmup/lr"] for t in trials[:3]] == pytest.approx(fit["enqueued"])
    # … and so did the trial runs MLflow recorded, by name
    runs = {r.info.run_name: r for r in client.search_runs([parent.info.experiment_id])
            if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    for trial in trials[:3]:
        run = runs[trial.user_attrs[TRIAL_NAME_ATTR]]
        assert float(run.data.params["lr"]) == pytest.approx(trial.params["lars_warmup/lr"])
        assert run.data.tags[TRANSFER_TAG] == trial.user_attrs[TRANSFER_ATTR]  # the key ASHA's exemption reads
    assert "## Batch-size transfer: predicted vs found optimum" in out


def test_asha_lets_the_transfers_prediction_run_to_the_end_and_still_ranks_it():
    """At the first rung, the prediction trailing a plain draw goes on where a plain draw as low is stopped; its
    later results count in the rungs (a plain draw below it at epoch 4 is stopped)."""
    from ray.tune.experiment import Trial as TuneTrial

    from study.optuna_store import TRANSFER_POINTS
    from study.tuner import ValidationASHA
    from trainables.records import TRANSFER_TAG

    asha = ValidationASHA(time_attr="epoch", metric="val_top1", mode="max", max_t=6, grace_period=2, reduction_factor=2)
    trials = {name: TuneTrial("t", config=config, stub=True) for name, config in
              [("drawn", {}), ("fit", {TRANSFER_TAG: TRANSFER_POINTS[0]}), ("low", {TRANSFER_TAG: TRANSFER_POINTS[1]}),
               ("late", {})]}
    for trial in trials.values():
        asha.on_trial_add(None, trial)

    def decide(name: str, epoch: int, val: float) -> str:
        return asha.on_trial_result(None, trials[name], {"epoch": epoch, "val_top1": val})

    assert decide("drawn", 2, 30.0) == asha.CONTINUE
    assert decide("fit", 2, 12.8) == asha.CONTINUE  # ASHA alone stops it: below the rung's top half
    assert decide("low", 2, 12.8) == asha.STOP  # the interval's ends get no exemption
    assert decide("fit", 4, 40.0) == asha.CONTINUE
    assert decide("late", 2, 31.0) == asha.CONTINUE
    assert decide("late", 4, 20.0) == asha.STOP  # the prediction's 40.0 at epoch 4 set the rung's cut
