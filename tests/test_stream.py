"""Streaming data (`trainables.stream`): what a trial reads per epoch, across DDP workers, from folders and
shards, and a study whose decoded data is twice the object store (it streams, and every trial finishes)."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest
import torch

from clusters import CLUSTER_MARKER, stop_cluster
from imagefolders import make_image_folder
from subprocs import assert_succeeds, free_port, run_logged
from trainables import shard
from trainables.batches import Shard
from trainables.config import TrialConfig
from trainables.data import DataError, Dataset, load_dataset
from trainables.feeds import MemoryFeed, StreamedFeed
from trainables.stream import SHUFFLE_WINDOW, Catalog, StreamFeed, build_catalog, epoch_order
from trainables.worker import streamed_splits

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("folder"), train=96, val=20, size=40)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, folder) -> Path:
    dest = tmp_path_factory.mktemp("shards")
    shard.convert(str(folder), str(dest), rows_per_group=8, rows_per_file=40, workers=1)
    return dest


def feed_of(catalog: Catalog, images, batch: int, rank: int = 0, world: int = 1, workers: int = 0) -> StreamFeed:
    return StreamFeed(catalog, images, {"test": catalog.test}, Shard(len(images), batch, rank, world, 3), workers, CPU)


def test_a_streamed_folder_trains_on_the_object_store_paths_very_batches(folder, data_cache):
    data = load_dataset("imagefolder", folder, 32)
    catalog = build_catalog("imagefolder", str(folder), 32)
    shard_ = Shard(len(data.train), 16, 0, 1, 3)
    memory = MemoryFeed(Dataset(data.train, data.test, data.mean, data.std), shard_, 3, CPU)
    streamed = StreamedFeed(feed_of(catalog, catalog.train, 16, workers=1), 3)
    pairs = list(zip(memory.epoch(2), streamed.epoch(2)))
    assert len(pairs) == 96 // 16
    for (step, x_mem, y_mem), (step_s, x_str, y_str) in pairs:
        assert step == step_s and torch.equal(y_mem, y_str) and torch.equal(x_mem, x_str)
    assert 0 <= streamed.epoch_metrics()["data_wait_share"] <= 1


def test_shard_order_is_a_permutation_fixed_by_seed_and_epoch_read_a_window_at_a_time(shards):
    train = build_catalog("imagefolder", str(shards), 32).train
    assert train.sharded and len(train) == 96
    first = epoch_order(train, seed=1, epoch=0)
    assert sorted(first.tolist()) == list(range(96))
    assert torch.equal(first, epoch_order(train, seed=1, epoch=0))
    assert not torch.equal(first, epoch_order(train, seed=1, epoch=1))
    assert not torch.equal(first, epoch_order(train, seed=2, epoch=0))
    groups = train.file * 100 + train.group  # each window of rows draws on at most SHUFFLE_WINDOW row groups
    window_rows = 8 * SHUFFLE_WINDOW
    for start in range(0, 96, window_rows):
        assert len(set(groups[first[start:start + window_rows]].tolist())) <= SHUFFLE_WINDOW


def test_a_decoded_datasets_digest_names_its_content_and_a_catalogs_its_listing(tmp_path, data_cache):
    """What a study records as its runs' dataset digest (MLflow's Datasets column): the same for the same files, another
    once a file is renamed — a decoded dataset's from its cache entry, a streamed one's from its listing."""
    root = make_image_folder(tmp_path / "folder", train=8, val=4, size=16, classes=2)
    catalog, decoded = build_catalog("imagefolder", str(root), 16), load_dataset("imagefolder", root, 16)
    assert len(catalog.digest) == len(decoded.digest) == 12
    assert build_catalog("imagefolder", str(root), 16).digest == catalog.digest
    assert load_dataset("imagefolder", root, 16).digest == decoded.digest  # read from the cache
    image = sorted((root / "train" / "class001").iterdir())[0]
    image.rename(image.with_name("renamed.JPEG"))
    assert build_catalog("imagefolder", str(root), 16).digest != catalog.digest
    assert load_dataset("imagefolder", root, 16).digest != decoded.digest


def test_a_corrupt_image_fails_the_read_naming_its_file(tmp_path):
    root = make_image_folder(tmp_path / "bad", train=8, val=4, size=16, classes=2)
    broken = root / "train" / "class001" / "broken.JPEG"
    broken.write_bytes(b"not a jpeg at all")
    catalog = build_catalog("imagefolder", str(root), 16)
    with pytest.raises(DataError, match=r"broken\.JPEG: cannot read image \(UnidentifiedImageError"):
        for _ in feed_of(catalog, catalog.train, 9, workers=1).epoch(0):
            pass


def test_imagenet_missing_or_mislaid_is_one_error_naming_the_layout_and_where_to_obtain_it(tmp_path):
    with pytest.raises(ValueError, match=r"imagenet data at .*directory not found.*train/<wnid>/\*\.JPEG.*image-net\.org"):
        TrialConfig.from_dict({"dataset": "imagenet", "data_dir": str(tmp_path / "nowhere"), "lr": 1.0})
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match=r"needs a 'train/' and a 'val/'.*image-net\.org"):
        build_catalog("imagenet", str(tmp_path / "flat"))


def test_imagenet_is_augmented_as_decoded_random_resized_crop_and_flip_and_evaluated_centre_cropped(tmp_path):
    root = make_image_folder(tmp_path / "inet", train=8, val=4, size=72, classes=2, prefix="n0")
    catalog = build_catalog("imagenet", str(root), 32)
    assert catalog.augment == "imagenet" and catalog.image_size == 32
    feed = feed_of(catalog, catalog.train, 8)
    (_, first, _, _), = list(feed.epoch(0))
    (_, again, _, _), = list(feed.epoch(0))
    (_, other, _, _), = list(feed.epoch(1))
    assert first.shape == (8, 3, 32, 32) and first.dtype == torch.uint8
    assert torch.equal(first, again) and not torch.equal(first, other)  # a function of (seed, epoch, image)
    (images, labels), = list(feed.evaluation("test"))
    assert images.shape == (4, 3, 32, 32) and labels.tolist() == [0, 0, 1, 1]


# --- two DDP workers (gloo) read one epoch ----------------------------------------------------------------

def _seen_ids_loop(config: dict) -> None:
    """Each rank's image names of one streamed epoch, written to a file per rank."""
    import ray.train

    ctx = ray.train.get_context()
    cfg = TrialConfig.from_dict(config["trial"], check_data=False)
    data = streamed_splits(cfg, Catalog.from_arrays(config["catalog"]))
    feed = feed_of(data.catalog, data.train, cfg.batch_size, ctx.get_world_rank(), ctx.get_world_size(), workers=1)
    seen = [data.train.source(int(i)) for _, _, _, ids in feed.epoch(0) for i in ids]
    held = [data.val.source(i) for i in range(len(data.val))]
    Path(config["out"], f"rank{ctx.get_world_rank()}.txt").write_text("\n".join(seen))
    Path(config["out"], "val.txt").write_text("\n".join(held))
    ray.train.report({"seen": len(seen)})


def test_two_ddp_workers_see_the_training_split_once_per_epoch_between_them(tmp_path, shards):
    import ray
    import ray.cloudpickle
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    from trainables.local_ray import init_local_ray

    catalog = build_catalog("imagefolder", str(shards), 32)
    trial = {"dataset": "imagefolder", "data_dir": str(shards), "lr": 1.0, "batch_size": 16, "val_size": 16,
             "data_path": "stream", "split_seed": 5}
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the loop is this test's, not an installed module
    init_local_ray(8)
    try:
        TorchTrainer(_seen_ids_loop, scaling_config=ScalingConfig(num_workers=2),
                     train_loop_config={"trial": trial, "catalog": catalog.to_arrays(), "out": str(tmp_path)}).fit()
    finally:
        ray.shutdown()
    ranks = [(tmp_path / f"rank{r}.txt").read_text().splitlines() for r in (0, 1)]
    held = set((tmp_path / "val.txt").read_text().splitlines())
    every = {catalog.train.source(i) for i in range(len(catalog.train))}
    assert len(ranks[0]) == len(ranks[1]) == 40 and not set(ranks[0]) & set(ranks[1])  # disjoint halves
    assert sorted(ranks[0] + ranks[1]) == sorted(every - held)  # the training split, each image once
    assert len(held) == 16 and held < every


# --- a study whose decoded data is twice the object store ----------------------------------------------

STORE = 75 * 2**20  # Ray's smallest object store (ray_constants.OBJECT_STORE_MINIMUM_MEMORY_BYTES)


def test_a_study_on_data_twice_the_object_store_streams_and_trains_every_trial(tmp_path, data_cache):
    from mlflow.tracking import MlflowClient

    size = 160  # decoded at 160 px: 1,100 images × 76.8 kB = 84.5 MB... ×2 needs 2,050 images
    images = 2 * STORE // (3 * size * size) + 1
    root = make_image_folder(tmp_path / "big", train=images - 50, val=50, size=size, classes=5)
    ray_cli = str(Path(sys.executable).parent / "ray")
    port, marker = free_port(), uuid.uuid4().hex
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled", CLUSTER_MARKER: marker,
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    storage = tmp_path / "results"
    try:
        assert_succeeds([ray_cli, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=8",
                         f"--object-store-memory={STORE}", "--include-dashboard=false", "--disable-usage-stats"],
                        tmp_path / "ray-start.log", env=env, timeout=180)
        done = run_logged([sys.executable, "-m", "study.run", "--space", "demo", "--variants", "lars_warmup,tvlars",
                           "--num-samples", "1", "--confirm", "0", "--address", f"127.0.0.1:{port}",
                           "--data-dir", str(root), "--storage", str(storage),
                           "--set", "dataset=imagefolder", "--set", f"image_size={size}", "--set", "epochs=2",
                           "--set", "limit=64", "--set", "val_size=16", "--set", "test_limit=20",
                           "--set", "batch_size=16", "--set", "eval_every=1", "--set", "grace_period=2",
                           "--set", "cpus_per_worker=2"],
                          tmp_path / "study.log", env=env, timeout=600)
    finally:
        stop_cluster(marker, port)
    assert done.returncode == 0, done.explain()
    decided = [line for line in done.output.splitlines() if line.startswith("data: streaming")]
    assert len(decided) == 1 and "> the smallest node's object store (0.07 GiB)" in decided[0], done.explain()
    assert "1 decode process(es)" in decided[0]
    assert sum("waiting on decoding" in line for line in done.output.splitlines()) == 2, done.explain()
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    trials = [r for r in runs if "trial_id" in r.data.tags]
    assert len(trials) == 2
    for run in trials:
        assert run.data.tags["status"] == "completed", run.data.tags
        assert [m.step for m in client.get_metric_history(run.info.run_id, "test_top1")] == [1, 2]
        assert 0 <= run.data.metrics["data_wait_share"] <= 1
        assert run.data.metrics["decode_processes"] == 1  # cpus_per_worker=2: one decoder beside the trainer
        assert "telemetry.parquet" in {a.path for a in client.list_artifacts(run.info.run_id)}



def test_a_corrupt_image_fails_its_trial_naming_the_file_and_the_study_ends_with_its_records(tmp_path, data_cache):
    from mlflow.tracking import MlflowClient

    root = make_image_folder(tmp_path / "data", train=40, val=10, size=32, classes=2)
    (root / "val" / "class001" / "broken.JPEG").write_bytes(b"\xff\xd8 truncated")  # read by the first evaluation
    storage = tmp_path / "results"
    done = run_logged([sys.executable, "-m", "study.run", "--space", "demo", "--variants", "lars_warmup",
                       "--num-samples", "1", "--confirm", "0", "--max-failures", "0", "--data-dir", str(root),
                       "--storage", str(storage), "--set", "dataset=imagefolder", "--set", "image_size=32",
                       "--set", "data_path=stream", "--set", "epochs=2", "--set", "eval_every=2",
                       "--set", "grace_period=2", "--set", "val_size=8", "--set", "batch_size=8",
                       "--set", "warmup_epochs=1"],
                      tmp_path / "study.log", env={**os.environ, "RAY_ADDRESS": ""}, timeout=600)
    assert done.returncode == 0, done.explain()  # the study ends as usual: its records, table and report
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    (trial,) = [r for r in runs if "trial_id" in r.data.tags]
    assert trial.data.tags["status"] == "errored", trial.data.tags
    assert f"{root / 'val' / 'class001' / 'broken.JPEG'}: cannot read image" in trial.data.tags["error"]
    assert [m.step for m in client.get_metric_history(trial.info.run_id, "train_loss")] == [1]  # epoch 1 kept
