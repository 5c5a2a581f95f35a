"""`python -m trainables.shard`: an ImageFolder packed into parquet shards, checked by reading them back.

Real images (Pillow), real pyarrow and a real S3-compatible server (`moto_server` on 127.0.0.1) for the
bucket case; numbers are exact: which rows land in which file and row group follows from the options.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from PIL import Image

from s3server import CREDENTIALS, moto_server
from trainables import shard
from trainables.shard import (CLASSES_KEY, DONE_MARKER, IMAGE_COLUMN, LABEL_COLUMN, SHARD_PATTERN, SPLIT_DIRS,
                              convert, filesystem_for, main)
from subprocs import REPO

BIN = Path(sys.executable).parent
CLASSES = ["cat", "n01", "n02"]  # created in another order: find_classes sorts
MAX_SIDE = 64
OPTIONS = dict(max_side=MAX_SIDE, rows_per_group=4, rows_per_file=10, workers=2, seed=0)
# 3 classes x 7 train images (21 rows: files of 10, 10, 1; groups 4, 4, 2 | 4, 4, 2 | 1) and val with
# only n01 and n02 (6 rows: one file, groups 4, 2), so val's labels must be train's indices (1, 2), not its own
TRAIN_FILES = [[4, 4, 2], [4, 4, 2], [1]]
VAL_FILES = [[4, 2]]


def _image(path: Path, size: tuple[int, int], shade: int, fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, (shade % 256, 80, 160))
    image.paste((255, 255, 255), (0, 0, size[0] // 3, size[1] // 3))  # something to resample
    image.save(path, format=fmt)


def _sizes(index: int) -> tuple[tuple[int, int], str]:
    """Train image `index` of a class: mostly 300x200 JPEGs, one portrait, one small JPEG, one PNG."""
    return {0: ((200, 300), "JPEG"), 1: ((40, 30), "JPEG"), 2: ((120, 80), "PNG")}.get(index, ((300, 200), "JPEG"))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for c, name in enumerate(reversed(CLASSES)):
        for i in range(7):
            size, fmt = _sizes(i)
            _image(src / "train" / name / f"{name}_{i}.{'png' if fmt == 'PNG' else 'JPEG'}", size, 30 * c + i, fmt)
        if name != "cat":
            for i in range(3):
                _image(src / "val" / name / f"v{i}.jpg", (300, 200), 7 * i + c)
    (src / "train" / "cat" / "notes.txt").write_text("not an image")  # skipped, as torchvision skips it
    return src


@pytest.fixture(scope="module")
def converted(source, tmp_path_factory) -> tuple[Path, dict]:
    dest = tmp_path_factory.mktemp("out") / "shards"
    return dest, convert(str(source), str(dest), **OPTIONS)


def _files(split_dir: Path) -> list[Path]:
    return sorted(split_dir.glob("part-*.parquet"))


def _rows(files: list[Path], filesystem: pafs.FileSystem | None = None) -> list[tuple[str, int, bytes]]:
    rows = []
    for file in files:
        table = pq.read_table(str(file), filesystem=filesystem)
        images = table.column(IMAGE_COLUMN).combine_chunks()
        rows += zip(images.field("path").to_pylist(), table.column(LABEL_COLUMN).to_pylist(),
                    images.field("bytes").to_pylist())
    return rows


def _expected_paths(source: Path, folder: str) -> list[str]:
    return sorted(p.relative_to(source / folder).as_posix() for p in (source / folder).rglob("*")
                  if p.suffix.lower() in (".jpeg", ".jpg", ".png"))


def test_counts_files_and_markers(converted):
    dest, counts = converted
    assert counts["images"] == 27 and counts["files"] == 4 and counts["classes"] == 3
    assert {k: (v["images"], v["files"]) for k, v in counts["splits"].items()} == {"train": (21, 3), "val": (6, 1)}
    assert sorted(p.name for p in dest.iterdir()) == sorted(SPLIT_DIRS) == ["train", "val"]
    assert [p.name for p in _files(dest / "train")] == [SHARD_PATTERN.format(i) for i in range(3)]
    assert [p.name for p in _files(dest / "val")] == ["part-00000.parquet"]
    for split in SPLIT_DIRS:
        assert (dest / split / DONE_MARKER).stat().st_size == 0
        assert sorted(p.name for p in (dest / split).iterdir()) == sorted(
            [DONE_MARKER] + [p.name for p in _files(dest / split)])  # nothing else (no probe file left)
    assert counts["bytes"] == sum(p.stat().st_size for p in dest.glob("*/part-*.parquet"))


def test_every_image_once_with_its_class_label(converted, source):
    dest, _ = converted
    for split, folder in (("train", "train"), ("val", "val")):
        rows = _rows(_files(dest / split))
        assert sorted(path for path, _, _ in rows) == _expected_paths(source, folder)
        assert len(rows) == (21 if split == "train" else 6)
        for path, label, _ in rows:
            assert label == CLASSES.index(path.split("/")[0]), path
    assert sorted({label for _, label, _ in _rows(_files(dest / "val"))}) == [1, 2]


def test_schema_classes_and_row_groups(converted):
    dest, _ = converted
    for split, layout in (("train", TRAIN_FILES), ("val", VAL_FILES)):
        files = _files(dest / split)
        assert len(files) == len(layout)
        for file, groups in zip(files, layout):
            meta = pq.ParquetFile(file)
            assert [meta.metadata.row_group(i).num_rows for i in range(meta.num_row_groups)] == groups
            schema = meta.schema_arrow
            assert json.loads(schema.metadata[CLASSES_KEY]) == CLASSES
            assert str(schema.field(IMAGE_COLUMN).type) == "struct<bytes: binary, path: string>"
            assert str(schema.field(LABEL_COLUMN).type) == "int64"
            assert shard.classes_of(schema) == CLASSES


def test_rows_are_shuffled(converted):
    dest, _ = converted
    rows = _rows(_files(dest / "train"))
    paths = [path for path, _, _ in rows]
    assert paths != sorted(paths)
    first_group = [label for _, label, _ in rows[:4]]
    assert len(set(first_group)) > 1, first_group


def test_max_side_resizes_and_keeps_small_jpegs(converted, source):
    dest, _ = converted
    resized = kept = reencoded = 0
    for split, path, data in [(s, p, d) for s in SPLIT_DIRS for p, _, d in _rows(_files(dest / s))]:
        original = source / split / path
        with Image.open(original) as before:
            w0, h0, fmt0 = *before.size, before.format
        with Image.open(io.BytesIO(data)) as after:
            w, h = after.size
            assert after.format == "JPEG"
        if max(w0, h0) > MAX_SIDE:
            resized += 1
            assert max(w, h) == MAX_SIDE, path
            assert abs(min(w, h) - min(w0, h0) * MAX_SIDE / max(w0, h0)) <= 1, (path, w, h)
            assert (w > h) == (w0 > h0), path
        else:
            assert (w, h) == (w0, h0)
            if fmt0 == "JPEG":
                kept += 1
                assert data == original.read_bytes(), path
            else:
                reencoded += 1
    assert (resized, kept, reencoded) == (24, 3, 0)  # 3 classes: 5 large + 1 PNG (120 px) train, 6 val; 3 small


def test_no_resize_keeps_jpeg_bytes_test_folder_and_stale_files(tmp_path):
    src = tmp_path / "src"
    for name in ("a", "b"):
        for i in range(3):
            _image(src / "train" / name / f"{i}.jpg", (300, 200), i)
        _image(src / "test" / name / "t.png", (50, 40), 9, fmt="PNG")
    dest = tmp_path / "out"
    first = convert(str(src), str(dest), rows_per_group=2, rows_per_file=2, workers=1)
    assert [first["splits"][s]["files"] for s in SPLIT_DIRS] == [3, 1]
    counts = convert(str(src), str(dest), rows_per_group=2, rows_per_file=100, workers=2)
    assert [(counts["splits"][s]["images"], counts["splits"][s]["files"]) for s in SPLIT_DIRS] == [(6, 1), (2, 1)]
    assert [p.name for p in _files(dest / "train")] == ["part-00000.parquet"]  # part-00001/2 of the first removed
    for path, _, data in _rows(_files(dest / "train")):
        assert data == (src / "train" / path).read_bytes()
    for path, _, data in _rows(_files(dest / "val")):  # test/ became val/; its PNGs became JPEGs, not resized
        with Image.open(io.BytesIO(data)) as image:
            assert (image.format, image.size) == ("JPEG", (50, 40)), path
    assert (dest / "val" / DONE_MARKER).exists() and not (dest / "test").exists()


def test_command_line(source, converted, tmp_path):
    dest = tmp_path / "cli"
    cmd = [sys.executable, "-m", "trainables.shard", str(source), str(dest), "--max-side", str(MAX_SIDE),
           "--rows-per-group", "4", "--rows-per-file", "10", "--workers", "2", "--seed", "0"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == [
        "train/part-00000.parquet", "train/part-00001.parquet", "train/part-00002.parquet", "val/part-00000.parquet"]
    assert lines[-1].startswith("done: 27 images, 4 files, ") and lines[-1].endswith(" images/s")
    assert done.stderr == ""
    # the same seed, the same rows in the same order as the in-process conversion
    for split in SPLIT_DIRS:
        assert _rows(_files(dest / split)) == _rows(_files(converted[0] / split))


def _bad_sources(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    no_train = tmp_path / "no_train"
    (no_train / "val" / "a").mkdir(parents=True)
    flat = tmp_path / "flat"  # images directly in train/, no class folders
    _image(flat / "train" / "x.jpg", (20, 20), 0)
    no_val = tmp_path / "no_val"
    _image(no_val / "train" / "a" / "x.jpg", (20, 20), 0)
    good = tmp_path / "good"
    _image(good / "train" / "a" / "x.jpg", (20, 20), 0)
    _image(good / "val" / "a" / "x.jpg", (20, 20), 0)
    (tmp_path / "a_file").write_text("")
    out = str(tmp_path / "out")
    return {
        "missing": ([str(tmp_path / "nope"), out], "no such folder"),
        "no_train": ([str(no_train), out], "needs train/<class>/<image>"),
        "no_class_folders": ([str(flat), out], "needs train/<class>/<image>"),
        "no_val": ([str(no_val), out], "needs a val/ or test/ folder"),
        "max_side": ([str(good), out, "--max-side", "8"], "--max-side must be at least 16"),
        "dest_not_writable": ([str(good), str(tmp_path / "a_file" / "out")], "not writable"),
    }


@pytest.mark.parametrize("case", ["missing", "no_train", "no_class_folders", "no_val", "max_side",
                                  "dest_not_writable"])
def test_bad_input_is_one_error_line(case, tmp_path, capsys):
    argv, message = _bad_sources(tmp_path)[case]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "out").exists()  # no work done


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_names_the_file(damage, tmp_path, capsys):
    src = tmp_path / "src"
    for i in range(6):
        _image(src / "train" / "a" / f"{i}.jpg", (300, 200), i)
    _image(src / "val" / "a" / "v.jpg", (30, 20), 0)
    bad = src / "train" / "a" / "3.jpg"
    bad.write_bytes(b"not a jpeg at all" if damage == "garbage" else bad.read_bytes()[:600])
    dest = tmp_path / "out"
    assert main([str(src), str(dest), "--workers", "2", "--rows-per-group", "2"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {bad}: cannot read image ("), err
    assert not (dest / "train" / DONE_MARKER).exists()


def test_filesystem_for_local_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fs, path = filesystem_for("rel/dir")
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "rel" / "dir")


# --- S3 ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """`moto_server` with an empty bucket `shards`; its URL."""
    with moto_server(tmp_path_factory.mktemp("s3"), ("shards",)) as env:
        yield env["AWS_ENDPOINT_URL"]


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch):
    for key, value in {"AWS_ENDPOINT_URL": s3_endpoint, **CREDENTIALS}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    return s3_endpoint


def test_convert_to_s3(source, converted, s3_env, capsys):
    counts = convert(str(source), "s3://shards/imagefolder", **OPTIONS)
    assert (counts["images"], counts["files"]) == (27, 4)
    fs, root = filesystem_for("s3://shards/imagefolder/")
    assert root == "shards/imagefolder"
    for split, layout in (("train", TRAIN_FILES), ("val", VAL_FILES)):
        listed = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(f"{root}/{split}")))
        names = [SHARD_PATTERN.format(i) for i in range(len(layout))]
        assert listed == sorted(f"{root}/{split}/{n}" for n in [DONE_MARKER, *names])
        for name, groups in zip(names, layout):
            with fs.open_input_file(f"{root}/{split}/{name}") as stream:
                meta = pq.ParquetFile(stream)
                assert [meta.metadata.row_group(i).num_rows for i in range(meta.num_row_groups)] == groups
                assert json.loads(meta.schema_arrow.metadata[CLASSES_KEY]) == CLASSES
        back = _rows([f"{root}/{split}/{n}" for n in names], filesystem=fs)
        assert back == _rows(_files(converted[0] / split))  # the same bytes, labels and order as on disk


def test_s3_bucket_missing_is_one_error_line(source, s3_env, capsys):
    assert main([str(source), "s3://no-such-bucket/x"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: no-such-bucket/x: not writable ("), err


def test_endpoint_from_environment_is_passed(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    assert shard._with_s3_endpoint("s3://b/p") == "s3://b/p?endpoint_override=http%3A%2F%2F127.0.0.1%3A9"
    assert shard._with_s3_endpoint("gs://b/p") == "gs://b/p"
    assert os.environ["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"
