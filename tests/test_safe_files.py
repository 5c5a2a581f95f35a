"""Files we read back hold only tensors and plain containers: a tampered decode cache is refused with one error
naming it (and nothing in it runs); one dataset has one cache entry however its path is spelled, and a changed
copy's new entry replaces its old one, while the same bytes copied again (new mtimes) find theirs.

The tampered checkpoint of a resumed study: tests/test_study_e2e.py."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from study.run import main
from trainables.data import load_dataset
from tampering import WritesMarker, tamper
from trainables.safe_load import UnsafeFileError, load_plain


def tiny_cifar(root: Path, per_class: int = 12) -> Path:
    """A CIFAR-10 folder in the parquet layout: 10 classes of flat-coloured 32×32 PNGs."""
    import io

    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", per_class), ("test", 2)):
        blobs, labels = [], []
        for label in range(10):
            for i in range(n):
                buffer = io.BytesIO()
                Image.new("RGB", (32, 32), (20 * label, 5 * i, 100)).save(buffer, format="PNG")
                blobs.append({"bytes": buffer.getvalue(), "path": f"{label}-{i}.png"})
                labels.append(label)
        pq.write_table(pa.table({"img": blobs, "label": labels}), root / f"{split}.parquet")
    return root


@pytest.fixture
def own_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("LAYERWISE_CACHE", str(cache))
    return cache


def test_a_tampered_decode_cache_is_refused_naming_the_file_and_never_run(tmp_path, own_cache):
    data_dir = tiny_cifar(tmp_path / "cifar10")
    first = load_dataset("cifar10", data_dir)
    (entry,) = own_cache.glob("cifar10-*.pt")
    assert set(torch.load(entry, weights_only=True)) >= {"train_images", "classes"}  # plain: tensors and lists
    marker = tmp_path / "marker"
    tamper(entry, marker)
    with pytest.raises(UnsafeFileError, match=rf"^{re.escape(str(entry))}: refused to load: it holds a pickled \S*open"):
        load_dataset("cifar10", data_dir)
    assert not marker.exists()
    entry.write_bytes(entry.read_bytes()[:1000])  # a truncated (not hostile) entry is decoded again, as before
    assert torch.equal(load_dataset("cifar10", data_dir).train.images, first.train.images)


def test_a_study_whose_decode_cache_was_tampered_stops_before_any_work(tmp_path, own_cache, capsys):
    data_dir = tiny_cifar(tmp_path / "cifar10")
    load_dataset("cifar10", data_dir)
    (entry,) = own_cache.glob("cifar10-*.pt")
    marker = tmp_path / "marker"
    tamper(entry, marker)
    code = main(["--space", "demo", "--data-dir", str(data_dir), "--storage", str(tmp_path / "results"),
                 "--set", "val_size=20", "--set", "batch_size=50", "--set", "limit=100"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and errors == [f"error: {entry}: refused to load: it holds a pickled io.open, not only tensors "
                                    f"and plain containers; a file this project wrote never does, so it was replaced "
                                    f"or tampered with"], errors
    assert not marker.exists()


def test_one_dataset_has_one_cache_entry_however_its_path_is_spelled(tmp_path, own_cache, monkeypatch):
    data_dir = tiny_cifar(tmp_path / "real" / "cifar10")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path)
    for spelling in (data_dir, link / "cifar10", Path("real/../link/cifar10"), Path("real/cifar10/")):
        load_dataset("cifar10", spelling)
    assert len(list(own_cache.glob("cifar10-*.pt"))) == 1


def test_a_changed_copy_of_the_data_replaces_its_cache_entry_and_other_copies_keep_theirs(tmp_path, own_cache):
    first, second = tiny_cifar(tmp_path / "a" / "cifar10"), tiny_cifar(tmp_path / "b" / "cifar10")
    load_dataset("cifar10", first), load_dataset("cifar10", second)
    before = sorted(own_cache.glob("cifar10-*.pt"))
    assert len(before) == 2
    legacy = own_cache / f"cifar10-{'0' * 20}.pt"  # an entry named as before 2026-12: no lookup finds it
    legacy.write_bytes(b"stale")
    tiny_cifar(first, per_class=13)  # the first copy changed: its entry can never be found again
    decoded = []
    changed = load_dataset("cifar10", first, on_decode=lambda root, entry: decoded.append(entry))
    after = sorted(own_cache.glob("cifar10-*.pt"))
    assert len(after) == 2 and not legacy.exists() and len(decoded) == 1 and len(changed.train) == 130
    assert len(set(after) & set(before)) == 1  # the second copy's entry, untouched
    assert [p.name.rsplit("-", 1)[0] for p in after] == [p.name.rsplit("-", 1)[0] for p in before]  # same sources


def test_the_same_bytes_copied_again_with_new_mtimes_are_not_decoded_again(tmp_path, own_cache):
    data_dir = tiny_cifar(tmp_path / "cifar10")
    first = load_dataset("cifar10", data_dir)
    (entry,) = own_cache.glob("cifar10-*.pt")
    (stamp_file,) = own_cache.glob("cifar10-*.stamp")
    stamp = stamp_file.read_text()
    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy, copy_function=shutil.copyfile)  # the same bytes: a data folder made again, as CI's VM does
    for file in copy.iterdir():
        os.utime(file, ns=(10**9, 10**9))  # new mtimes, whatever the clock's grain
    shutil.rmtree(data_dir)
    copy.rename(data_dir)
    decoded = []
    again = load_dataset("cifar10", data_dir, on_decode=lambda root, path: decoded.append(path))
    assert decoded == [] and sorted(own_cache.glob("cifar10-*.pt")) == [entry]
    assert torch.equal(again.train.images, first.train.images)
    seen, content = stamp_file.read_text().split()
    assert content == stamp.split()[1] and seen != stamp.split()[0]  # the same bytes under the new sizes and mtimes


def test_load_plain_names_the_file_as_the_caller_shows_it(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"w": torch.ones(2), "bad": WritesMarker(tmp_path / "m")}, path)
    with pytest.raises(UnsafeFileError, match=r"^s3://bucket/trial/checkpoint_000001/state.pt: refused"):
        load_plain(path, "s3://bucket/trial/checkpoint_000001/state.pt")
    assert not (tmp_path / "m").exists() and os.listdir(tmp_path) == ["state.pt"]
