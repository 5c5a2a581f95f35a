"""The papers' ImageNet studies: their protocols, lr ranges, GPU requirement, and the published rows beside them."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from reports.collect import row_label
from reports.reference import attach_paper, lr_key, paper_cells
from search_spaces import SPACES, available, get_space
from search_spaces.paper import PAPER_LRS
from study.cluster import TrialShape, fit_trials
from study.errors import InputError
from study.plan import make_plan

RESNET50 = {"imagenet_resnet50_bs8k": 8192, "imagenet_resnet50_bs16k": 16384, "imagenet_resnet50_bs32k": 32768}
CLARS_SPACES = {"clars_imagenet_densenet121": "densenet121", "clars_imagenet_mobilenet_v2": "mobilenet_v2"}
RESNET50_VARIANTS = ["lars_warmup", "lars_nowarmup", "lamb_warmup", "lamb_nowarmup", "tvlars", "clars", "lambc"]
CPU_BOX = [{"CPU": 16.0, "GPU": 0.0}]


def _lr(space, variant):
    (lr,) = [p for p in space.variants[variant].searched if p.key == "lr"]
    return lr


def test_the_spaces_are_registered_and_listed():
    assert set(RESNET50) | set(CLARS_SPACES) <= set(SPACES)
    text = available()
    assert "imagenet_resnet50_bs{8k,16k,32k}" in text and "clars_imagenet_{densenet121,mobilenet_v2}" in text


@pytest.mark.parametrize("name", [*RESNET50, *CLARS_SPACES])
def test_each_space_resolves_with_its_protocol(name):
    plan = make_plan(name, {})
    shared = plan.shared()
    assert (shared.task, shared.dataset, shared.image_size, shared.epochs) == ("clf", "imagenet", 224, 90)
    assert (shared.micro_batch_size, shared.bn_group) == ("auto", 128)  # any GPU, BatchNorm over 128 images
    if name in RESNET50:
        assert (shared.model, shared.batch_size, shared.label_smoothing) == ("resnet50", RESNET50[name], 0.1)
    else:
        assert (shared.model, shared.label_smoothing) == (CLARS_SPACES[name], 0.0)
    for draw in plan.space.corner_draws(frozenset()):  # every variant at both ends of its ranges
        cfg = plan.trial_config(draw)
        assert cfg.dataset == "imagenet" and cfg.epochs == 90


@pytest.mark.parametrize("name", RESNET50)
def test_resnet50_variants_are_the_papers_settings(name):
    space = get_space(name)
    assert list(space.variants) == RESNET50_VARIANTS
    fixed = {k: v.fixed for k, v in space.variants.items()}
    assert {k: (f["optimizer"], f["scheduler"]) for k, f in fixed.items()} == {
        "lars_warmup": ("lars", "warmup_cosine"), "lars_nowarmup": ("lars", "poly"),
        "lamb_warmup": ("lamb", "warmup_cosine"), "lamb_nowarmup": ("lamb", "poly"),
        "tvlars": ("tvlars", "none"), "clars": ("clars", "poly"), "lambc": ("lambc", "warmup_cosine")}
    assert fixed["lars_warmup"]["warmup_epochs"] == 5.0  # Goyal et al.
    assert fixed["lamb_warmup"]["warmup_epochs"] == fixed["lambc"]["warmup_epochs"] == 20.0  # the LAMB code
    labels = {k: row_label(space.settings({"variant": k})) for k in space.variants}
    assert labels == {"lars_warmup": "LARS + warm-up", "lars_nowarmup": "LARS", "lamb_warmup": "LAMB + warm-up",
                      "lamb_nowarmup": "LAMB", "tvlars": "TVLARS", "clars": "CLARS", "lambc": "LAMBC + warm-up"}
    assert {p.key for p in space.variants["tvlars"].searched} == {"lam", "delay_epochs", "gamma_min", "lr"}
    assert space.num_samples == 4 and space.confirm >= 1 and space.seeds >= 3


def test_lr_ranges_bracket_the_centres_three_fold():
    lars_centre = {8192: 11.965, 16384: 16.921, 32768: 23.931}  # (15·17·19)^(1/3) at 16K, √-scaled
    lamb_centre = {8192: 0.02, 16384: 0.028284, 32768: 0.04}  # 0.04 at 32K, √-scaled
    for name, size in RESNET50.items():
        space = get_space(name)
        for variant in ("lars_warmup", "lars_nowarmup", "tvlars", "clars"):
            lr = _lr(space, variant)
            assert lr.log and lr.low == pytest.approx(lars_centre[size] / 3, rel=1e-4)
            assert lr.high == pytest.approx(lars_centre[size] * 3, rel=1e-4)
        for variant in ("lamb_warmup", "lamb_nowarmup", "lambc"):
            lr = _lr(space, variant)
            assert lr.log and lr.low == pytest.approx(lamb_centre[size] / 3, rel=1e-4)
            assert lr.high == pytest.approx(lamb_centre[size] * 3, rel=1e-4)
    assert _lr(get_space("imagenet_resnet50_bs32k"), "lamb_warmup").low < 0.04 / 2  # the LAMB code's lr, well inside
    at_16k = _lr(get_space("imagenet_resnet50_bs16k"), "lars_warmup")
    assert at_16k.low < min(PAPER_LRS[16384]) and max(PAPER_LRS[16384]) < at_16k.high  # the TVLARS paper's 16K lrs
    assert _lr(get_space("imagenet_resnet50_bs32k"), "lars_warmup").high > 29 * 2  # MLPerf-style ~29, with room


@pytest.mark.parametrize("name", CLARS_SPACES)
def test_clars_spaces_compare_clars_with_lars_at_every_batch(name):
    space = get_space(name)
    assert len(space.variants) == 3 * 3
    for size in (8192, 16384, 32768):
        for family in ("clars", "lars_warmup", "lars_nowarmup"):
            variant = space.variants[f"{family}_bs{size}"]
            assert variant.fixed["batch_size"] == size
            assert _lr(space, f"{family}_bs{size}").low < 12.0 * math.sqrt(size / 8192) < _lr(
                space, f"{family}_bs{size}").high


@pytest.mark.parametrize("name", [*RESNET50, *CLARS_SPACES])
def test_a_cpu_machine_is_refused_unless_gpus_per_worker_is_zero(name):
    plan = make_plan(name, {})
    assert plan.space.gpus_per_worker >= 1
    shape = TrialShape(plan.space.workers, plan.space.cpus_per_worker, plan.space.gpus_per_worker)
    with pytest.raises(InputError, match="no GPU for it.*--set gpus_per_worker=0"):
        fit_trials(CPU_BOX, shape, "this machine")
    cpu = make_plan(name, {"gpus_per_worker": 0})
    assert cpu.space.gpus_per_worker == 0
    assert fit_trials(CPU_BOX, TrialShape(cpu.space.workers, cpu.space.cpus_per_worker, 0), "this machine") >= 1
    assert cpu.shared().micro_batch_size == "auto"  # still resolves on CPU (no 'sync' BatchNorm)


def test_published_imagenet_rows_load_and_name_a_setting_of_our_spaces():
    paper = paper_cells()
    imagenet = paper[paper["dataset"] == "imagenet"]
    assert len(imagenet) >= 1
    lamb = imagenet[(imagenet["label"] == "LAMB + warm-up") & (imagenet["batch_size"] == 32768)].iloc[0]
    assert (lamb["model"], lamb["epochs"], lamb["paper_top1"], lamb["paper"]) == (
        "resnet50", 90, 76.3, "LAMB authors' code")
    assert math.isnan(lamb["lr"])  # stands beside every lr we try
    labels = {}
    for name in RESNET50:
        space = get_space(name)
        for variant in space.variants:
            s = space.settings({"variant": variant})
            labels[(row_label(s), s["task"], s["dataset"], s["model"], s["epochs"], s["batch_size"])] = name
    for _, row in imagenet.iterrows():  # every published row is a cell one of our studies fills
        assert (row["label"], row["task"], row["dataset"], row["model"], row["epochs"], row["batch_size"]) in labels


def _cell(label, batch, lr, model="resnet50", dataset="imagenet", epochs=90):
    return {"label": label, "task": "clf", "dataset": dataset, "model": model, "epochs": epochs,
            "batch_size": batch, "lr": lr_key(lr), "mean": 70.0}


def test_attach_paper_puts_the_published_top1_beside_every_lr_of_its_setting():
    cells = pd.DataFrame([
        _cell("LAMB + warm-up", 32768, 0.0412), _cell("LAMB + warm-up", 32768, 0.0213),  # matched at any lr
        _cell("LAMB + warm-up", 16384, 0.03),  # another batch
        _cell("LAMB", 32768, 0.04),  # another row (no warm-up)
        _cell("LAMB + warm-up", 32768, 0.04, epochs=45),  # another protocol
        _cell("LARS + warm-up", 512, 2.0, model="resnet18", dataset="cifar10", epochs=100),  # TVLARS Table 1, exact lr
        _cell("LARS + warm-up", 512, 2.5, model="resnet18", dataset="cifar10", epochs=100),  # ... at another lr
    ])
    out = attach_paper(cells)
    assert len(out) == len(cells)
    assert out["paper_top1"].tolist()[:2] == [76.3, 76.3] and out["paper"].tolist()[:2] == ["LAMB authors' code"] * 2
    assert out["paper_top1"].iloc[2:5].isna().all()
    assert out["paper_top1"].iloc[5] == 77.49 and out["paper"].iloc[5] == "TVLARS paper"
    assert math.isnan(out["paper_top1"].iloc[6])
    assert out["lr"].tolist() == cells["lr"].tolist()  # our cells keep their own lr


# --- the command itself on this CPU machine ----------------------------------------------------------------

def _study(tmp_path, *args: str, timeout: float):
    import os
    import sys
    from pathlib import Path

    from subprocs import run_logged

    return run_logged([sys.executable, "-m", "study.run", "--space", "imagenet_resnet50_bs32k",
                       "--storage", str(tmp_path / "results"), *args], tmp_path / "study.log",
                      cwd=Path(__file__).resolve().parents[1], env={**os.environ, "RAY_ADDRESS": ""}, timeout=timeout)


def test_the_32k_study_on_a_cpu_machine_is_one_gpu_error_within_a_minute(tmp_path):
    import time

    started = time.monotonic()
    done = _study(tmp_path, timeout=120)
    errors = [line for line in done.output.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and time.monotonic() - started < 60, done.explain()
    assert len(errors) == 1 and "no GPU for it" in errors[0] and "--set gpus_per_worker=0" in errors[0]


def test_a_smoke_study_on_a_tiny_imagenet_folder_runs_to_the_end_on_cpu(tmp_path, data_cache):
    from mlflow.tracking import MlflowClient

    from imagefolders import make_image_folder

    root = make_image_folder(tmp_path / "imagenet", train=48, val=16, size=80, classes=4, prefix="n0")
    done = _study(tmp_path, "--data-dir", str(root), "--variants", "lars_warmup,lamb_nowarmup,clars",
                  "--num-samples", "1", "--confirm", "0", "--set", "gpus_per_worker=0", "--set", "epochs=2",
                  "--set", "warmup_epochs=1", "--set", "batch_size=16", "--set", "bn_group=8",
                  "--set", "image_size=64", "--set", "val_size=8", "--set", "grace_period=2", timeout=600)
    assert done.returncode == 0, done.explain()
    assert any(line.startswith("data: streaming 48 + 16 images") and "imagenet's augmentation reads the source images"
               in line for line in done.output.splitlines()), done.explain()
    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("imagenet_resnet50_bs32k").experiment_id])
    trials = {r.data.tags["variant"]: r for r in runs if "trial_id" in r.data.tags}
    assert sorted(trials) == ["clars", "lamb_nowarmup", "lars_warmup"]
    for run in trials.values():  # a 32K lr at batch 16 may well diverge: ended either way, never errored
        assert run.data.tags["status"] in ("completed", "diverged"), run.data.tags
        assert run.data.params["model"] == "resnet50" and run.data.params["dataset"] == "imagenet"
