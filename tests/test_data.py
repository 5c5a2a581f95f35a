"""Datasets: real CIFAR-10 parquet, generated tiny-imagenet / imagefolder layouts, subsets, clear errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from trainables.data import DataError, balanced_subset, load_dataset


def _png(path: Path, color: int, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (color, color, color)).save(path, format="PNG")


def test_cifar10_parquet_decodes_real_data(cifar10_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERWISE_CACHE", str(tmp_path))  # a cache of its own: it counts the entries
    data = load_dataset("cifar10", cifar10_dir)
    assert data.train.images.shape == (50000, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert data.test.images.shape == (10000, 3, 32, 32)
    assert torch.bincount(data.train.labels).tolist() == [5000] * 10
    assert data.train.classes[0] == "airplane" and data.num_classes == 10
    # CIFAR-10's well-known channel means (0.491, 0.482, 0.447), up to JPEG re-encoding
    assert data.mean == pytest.approx((0.491, 0.482, 0.447), abs=0.01)
    cached = list(tmp_path.glob("cifar10-*.pt"))
    assert len(cached) == 1
    again = load_dataset("cifar10", cifar10_dir)  # from the cache
    assert torch.equal(again.test.images, data.test.images)


def test_balanced_subset_is_class_balanced_and_fixed(cifar10_dir, data_cache):
    train = load_dataset("cifar10", cifar10_dir).train
    sub = balanced_subset(train, 1003)
    assert len(sub) == 1003
    assert torch.bincount(sub.labels).tolist() == [101, 101, 101] + [100] * 7
    assert torch.equal(balanced_subset(train, 1003).images, sub.images)
    assert balanced_subset(train, None) is train


def test_missing_directory_names_path_and_layout(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=r"cifar10 data at '.*nowhere': directory not found; expected layout: "
                                        r"torchvision's 'cifar-10-batches-py/'.* or train.parquet \+ test.parquet"):
        load_dataset("cifar10", missing)


def test_malformed_parquet_is_a_clear_error(tmp_path, data_cache):
    pq.write_table(pa.table({"image": [b"x"], "y": [0]}), tmp_path / "train.parquet")
    pq.write_table(pa.table({"image": [b"x"], "y": [0]}), tmp_path / "test.parquet")
    with pytest.raises(DataError, match=r"'train.parquet' has columns \['image', 'y'\]; expected layout: "
                                        r"train.parquet and test.parquet with columns img\{bytes,path\} and label"):
        load_dataset("parquet", tmp_path)
    (tmp_path / "test.parquet").unlink()
    (tmp_path / "train.parquet").unlink()
    with pytest.raises(DataError, match="'train.parquet' not found"):
        load_dataset("parquet", tmp_path)


def test_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match="dataset: unknown 'mnist'; choose one of cifar10, cifar100"):
        load_dataset("mnist", tmp_path)


def test_tinyimagenet_val_split_follows_annotations(tmp_path, data_cache):
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01", "n02"]
    (root).mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids))
    for i, wnid in enumerate(wnids):
        for j in range(3):
            _png(root / "train" / wnid / "images" / f"{wnid}_{j}.JPEG", 10 + i, 64)
    _png(root / "val" / "images" / "val_0.JPEG", 200, 64)
    _png(root / "val" / "images" / "val_1.JPEG", 100, 64)
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn02\t0\t0\t1\t1\nval_1.JPEG\tn01\t0\t0\t1\t1\n")
    data = load_dataset("tinyimagenet", tmp_path)
    assert data.train.images.shape == (6, 3, 64, 64)
    assert data.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.test.labels.tolist() == [1, 0]
    assert data.test.images[:, 0, 0, 0].tolist() == [200, 100]
    (root / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DataError, match=r"'val/val_annotations.txt' not found; expected layout: 'tiny-imagenet-200/'"):
        load_dataset("tinyimagenet", tmp_path)


def test_imagefolder_resizes_to_image_size(tmp_path, data_cache):
    for split in ("train", "val"):
        for k, cls in enumerate(("cat", "dog")):
            _png(tmp_path / split / cls / "a.png", 50 * k, 40)
            _png(tmp_path / split / cls / "b.png", 50 * k, 24)
    data = load_dataset("imagefolder", tmp_path, image_size=32)
    assert data.train.images.shape == (4, 3, 32, 32)
    assert data.train.classes == ["cat", "dog"] and data.test.labels.tolist() == [0, 0, 1, 1]
    with pytest.raises(DataError, match="needs a 'train/' and a 'val/' or 'test/' folder"):
        load_dataset("imagefolder", tmp_path / "train")


FULL_CACHE = """
import sys, warnings
from pathlib import Path
from trainables.data import load_dataset
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    data = load_dataset("imagefolder", sys.argv[1])
print(len(data.train), len(data.test))
for w in caught:
    print("warned:", w.message)
print("left:", sorted(p.name for p in Path(sys.argv[2]).iterdir()))
"""


def test_a_cache_on_a_full_disk_leaves_the_data_decoded_and_the_disk_as_it_was(tmp_path, data_cache):
    """A cache folder on a full disk once failed the study with torch.save's "iostream error" traceback, leaving its
    half-written file to fill the disk further; the decoded data is in memory, so the run goes on and says why."""
    from imagefolders import make_image_folder
    from subprocs import why_no_unshare

    why = why_no_unshare()
    if why:
        pytest.skip(why)
    folder = make_image_folder(tmp_path / "images", train=96, val=32)  # decoded at 64 px: 128 × 3 × 64² B = 1.5 MiB
    cache = tmp_path / "cache"
    cache.mkdir()
    script = (f"mount -t tmpfs -o size=128k tmpfs {cache} && LAYERWISE_CACHE={cache} "
              f"{sys.executable} -c '{FULL_CACHE}' {folder} {cache}")
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    sizes, warned, left = done.stdout.splitlines()[:3]
    assert sizes == "96 32"
    assert re.fullmatch(rf"warned: data: the decoded copy could not be kept at {cache}/imagefolder-\S+\.pt "
                        r"\(\d+\.\d MiB free there, 1\.5 MiB needed\): this run goes on from memory, and the next "
                        r"decodes again", warned), warned
    assert left.startswith("left: [") and ".tmp" not in left, left  # the half-written file removed
