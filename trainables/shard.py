"""Pack an ImageFolder (ImageNet's layout) into parquet shards of JPEG bytes + labels.

    python -m trainables.shard SRC DEST [--max-side 256] [--rows-per-group 256] [--rows-per-file 8192]
                                        [--workers N] [--seed 0]

SRC holds `train/<class>/<image>` and `val/<class>/<image>` (or `test/…`, written as `val`). DEST is a local
folder or a URI (`s3://bucket/prefix`, `gs://…`; S3's endpoint from `AWS_ENDPOINT_URL`). Many small files
are slow on any object store; a few large shards are what a trial streams (trainables/stream.py).

The format (the reader imports the constants below):
- `DEST/<split>/part-00000.parquet`, `part-00001.parquet`, … for each split in `SPLIT_DIRS`, each with at
  most --rows-per-file rows in row groups of --rows-per-group rows (a file's last group may be shorter).
- columns `img`: struct<bytes: binary, path: string> (HF style; path relative to the split folder, with
  `/`, e.g. "n01440764/x.JPEG") and `label`: int64.
- schema metadata `classes`: a JSON list of class names, torchvision's `find_classes` order (the sorted
  folder names of train/), the same in every file; val uses train's class indices.
- rows are shuffled once (--seed) before packing, so every row group mixes classes.
- images: the longer side at most --max-side, aspect kept (as FFCV does); re-encoded as JPEG quality 90 only
  when resized or not a JPEG already, so a JPEG that needs no resize keeps its original bytes.
- completeness: `DEST/<split>/_SUCCESS` (empty) is written after all of that split's files, and removed
  before a split is (re)written: a split without it is incomplete (a conversion failed or is running).
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import posixpath
import random
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from itertools import islice
from urllib.parse import quote

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from trainables.folders import is_uri

SPLIT_DIRS = ("train", "val")
SHARD_PATTERN = "part-{:05d}.parquet"
IMAGE_COLUMN = "img"
LABEL_COLUMN = "label"
CLASSES_KEY = b"classes"
DONE_MARKER = "_SUCCESS"

JPEG_QUALITY = 90
MIN_MAX_SIDE = 16
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
_SOURCE_DIRS = {"train": ("train",), "val": ("val", "test")}
_CHUNKSIZE = 8
_PROBE = ".shard-write-test"


class ShardError(Exception):
    """A problem with the input or the output: one line for the user."""


# --- storage -------------------------------------------------------------------------------------------------


def filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and path for a local path or a URI (S3 endpoint from `AWS_ENDPOINT_URL`)."""
    if not is_uri(uri):
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    return pafs.FileSystem.from_uri(_with_s3_endpoint(uri.rstrip("/")))


def _with_s3_endpoint(uri: str) -> str:
    """`uri` with `endpoint_override` from the environment (older pyarrow does not read it itself)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not uri.startswith("s3://") or not endpoint or "endpoint_override=" in uri:
        return uri
    return f"{uri}{'&' if '?' in uri else '?'}endpoint_override={quote(endpoint, safe='')}"


def _join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts)


def writable_dest(dest: str) -> tuple[pafs.FileSystem, str]:
    """`filesystem_for(dest)` once the folder is made and a small file written and deleted there (or ShardError)."""
    try:
        fs, path = filesystem_for(dest)
    except (OSError, pa.ArrowException) as exc:
        raise ShardError(f"{dest}: cannot open ({_oneline(exc)})") from None
    probe = _join(path, _PROBE)
    try:
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(probe) as out:
            out.write(b"")
        fs.delete_file(probe)
    except (OSError, pa.ArrowException) as exc:
        raise ShardError(f"{path}: not writable ({_oneline(exc)})") from None
    return fs, path


def _oneline(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# --- source --------------------------------------------------------------------------------------------------


def find_classes(train_dir: str) -> list[str]:
    """The class names of an ImageFolder split: its sorted sub-folder names (torchvision's order)."""
    return sorted(entry.name for entry in os.scandir(train_dir) if entry.is_dir())


def list_images(split_dir: str, classes: list[str]) -> list[tuple[str, int]]:
    """(path relative to `split_dir` with `/`, label) for every image under the class folders, sorted."""
    samples = []
    for label, name in enumerate(classes):
        folder = os.path.join(split_dir, name)
        if not os.path.isdir(folder):
            continue
        for root, _dirs, files in sorted(os.walk(folder, followlinks=True)):
            for file in sorted(files):
                if file.lower().endswith(IMAGE_EXTENSIONS):
                    rel = os.path.relpath(os.path.join(root, file), split_dir)
                    samples.append((rel.replace(os.sep, "/"), label))
    return samples


def source_splits(src: str) -> tuple[list[str], dict[str, tuple[str, list[tuple[str, int]]]]]:
    """Train's classes and, per output split, its source folder and samples; ShardError if SRC is unusable."""
    if not os.path.isdir(src):
        raise ShardError(f"{src}: no such folder")
    train_dir = os.path.join(src, "train")
    classes = find_classes(train_dir) if os.path.isdir(train_dir) else []
    if not classes:
        raise ShardError(f"{src}: needs train/<class>/<image> folders (and val/ or test/)")
    splits = {}
    for split in SPLIT_DIRS:
        folder = next((os.path.join(src, d) for d in _SOURCE_DIRS[split] if os.path.isdir(os.path.join(src, d))),
                      None)
        if folder is None:
            raise ShardError(f"{src}: needs a {' or '.join(d + '/' for d in _SOURCE_DIRS[split])} folder")
        unknown = sorted(set(find_classes(folder)) - set(classes))
        if unknown:
            raise ShardError(f"{folder}: class folders not in train/: {', '.join(unknown[:5])}")
        samples = list_images(folder, classes)
        if not samples:
            raise ShardError(f"{folder}: no images in class folders (<class>/<image>: {', '.join(IMAGE_EXTENSIONS)})")
        splits[split] = (folder, samples)
    empty = sorted(set(classes) - {classes[label] for _, label in splits["train"][1]})
    if empty:
        raise ShardError(f"{train_dir}: class folders without images: {', '.join(empty[:5])}")
    return classes, splits


# --- images --------------------------------------------------------------------------------------------------


def encode_image(data: bytes, max_side: int | None) -> bytes:
    """JPEG bytes for an encoded image: `data` itself if a JPEG within `max_side`, else resized/re-encoded."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        if max_side is None or max(image.size) <= max_side:
            if image.format == "JPEG":
                image.load()  # a truncated or corrupt file fails here, not in a trial
                return data
            size = image.size
        else:
            size = fitted_size(image.size, max_side)
            image.draft("RGB", (2 * size[0], 2 * size[1]))  # a JPEG decodes at a reduced scale, >= 2x the target
        image = image.convert("RGB")
        if image.size != size:
            image = image.resize(size, Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=JPEG_QUALITY)
        return out.getvalue()


def fitted_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """`size` scaled so that its longer side is `max_side`, the aspect ratio kept (the shorter side rounded)."""
    w, h = size
    scale = max_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def load_sample(split_dir: str, max_side: int | None, sample: tuple[str, int]) -> tuple[bytes, str, int]:
    """(JPEG bytes, relative path, label) for one sample; ShardError naming the file if it cannot be read."""
    rel, label = sample
    path = os.path.join(split_dir, rel)
    try:
        with open(path, "rb") as file:
            data = file.read()
        return encode_image(data, max_side), rel, label
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for a bad file
        from PIL import UnidentifiedImageError

        reason = "not an image Pillow knows" if isinstance(exc, UnidentifiedImageError) else _oneline(exc)
        raise ShardError(f"{path}: cannot read image ({reason})") from None


def decoded(pool: ProcessPoolExecutor, split_dir: str, samples: list[tuple[str, int]], max_side: int | None,
            window: int) -> Iterator[tuple[bytes, str, int]]:
    """`load_sample` over `samples` in order, at most two windows of `window` images in flight."""
    load = partial(load_sample, split_dir, max_side)
    pending: deque[Iterator] = deque()
    for start in range(0, len(samples), window):
        pending.append(pool.map(load, samples[start:start + window], chunksize=_CHUNKSIZE))
        if len(pending) > 1:
            yield from pending.popleft()
    while pending:
        yield from pending.popleft()


# --- shards --------------------------------------------------------------------------------------------------


def shard_schema(classes: list[str]) -> pa.Schema:
    """The shards' schema: img struct<bytes, path>, label int64, and the class names as metadata."""
    image = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
    return pa.schema([pa.field(IMAGE_COLUMN, image), pa.field(LABEL_COLUMN, pa.int64())],
                     metadata={CLASSES_KEY: json.dumps(classes).encode()})


def classes_of(schema: pa.Schema) -> list[str]:
    """The class names stored in a shard's schema metadata."""
    return json.loads((schema.metadata or {})[CLASSES_KEY])


def _table(rows: list[tuple[bytes, str, int]], schema: pa.Schema) -> pa.Table:
    images = pa.StructArray.from_arrays([pa.array([r[0] for r in rows], pa.binary()),
                                         pa.array([r[1] for r in rows], pa.string())], names=["bytes", "path"])
    return pa.Table.from_arrays([images, pa.array([r[2] for r in rows], pa.int64())], schema=schema)


def _file_groups(rows: Iterator, rows_per_group: int, rows_per_file: int) -> Iterator[list]:
    """The next file's row groups from `rows`: `rows_per_group` rows each, `rows_per_file` in all (or fewer)."""
    done = 0
    while group := list(islice(rows, min(rows_per_group, rows_per_file - done))):
        yield group
        done += len(group)


def write_shard(fs: pafs.FileSystem, path: str, groups: Iterable[list], schema: pa.Schema) -> tuple[int, int]:
    """Write one parquet file, a row group per item of `groups`; its rows and size in bytes (0 rows: no file)."""
    rows, writer = 0, None
    try:
        for group in groups:
            if writer is None:
                writer = pq.ParquetWriter(path, schema, filesystem=fs, use_dictionary=[LABEL_COLUMN],
                                          write_statistics=[LABEL_COLUMN])
            writer.write_table(_table(group, schema), row_group_size=len(group))
            rows += len(group)
    finally:
        if writer is not None:
            writer.close()
    return rows, (fs.get_file_info(path).size if rows else 0)


def write_split(fs: pafs.FileSystem, out_dir: str, rows: Iterator[tuple[bytes, str, int]], schema: pa.Schema,
                rows_per_group: int, rows_per_file: int, name: str = "") -> dict:
    """Write `rows` as shards under `out_dir`, then `_SUCCESS`; counts of images, files and bytes."""
    marker = _join(out_dir, DONE_MARKER)
    fs.create_dir(out_dir, recursive=True)
    if fs.get_file_info(marker).type != pafs.FileType.NotFound:
        fs.delete_file(marker)
    images = files = size = 0
    start, rows = time.monotonic(), iter(rows)
    while True:  # row groups go to the file as they are made: one group's images in memory, not a file's
        file_name = SHARD_PATTERN.format(files)
        count, file_size = write_shard(fs, _join(out_dir, file_name), _file_groups(rows, rows_per_group,
                                                                                    rows_per_file), schema)
        if not count:
            break
        images, files, size = images + count, files + 1, size + file_size
        rate = images / max(time.monotonic() - start, 1e-9)
        print(f"{name}/{file_name}: {count} images, {file_size / 1e6:.1f} MB "
              f"({images} in {files} files, {rate:.0f} images/s)", flush=True)
    _remove_stale(fs, out_dir, files)
    with fs.open_output_stream(marker) as out:
        out.write(b"")
    return {"images": images, "files": files, "bytes": size}


def _remove_stale(fs: pafs.FileSystem, out_dir: str, files: int) -> None:
    """Delete shards numbered `files` and on, left by an earlier, larger conversion into the same place."""
    index = files
    while fs.get_file_info(path := _join(out_dir, SHARD_PATTERN.format(index))).type == pafs.FileType.File:
        fs.delete_file(path)
        index += 1


# --- conversion ----------------------------------------------------------------------------------------------


def _check_options(max_side: int | None, rows_per_group: int, rows_per_file: int, workers: int) -> None:
    if max_side is not None and max_side < MIN_MAX_SIDE:
        raise ShardError(f"--max-side must be at least {MIN_MAX_SIDE} (got {max_side})")
    for flag, value in (("--rows-per-group", rows_per_group), ("--rows-per-file", rows_per_file),
                        ("--workers", workers)):
        if value < 1:
            raise ShardError(f"{flag} must be at least 1 (got {value})")


def convert(src: str, dest: str, max_side: int | None = None, rows_per_group: int = 256,
            rows_per_file: int = 8192, workers: int | None = None, seed: int = 0) -> dict:
    """Convert the ImageFolder `src` to shards under `dest`; counts per split and in total (ShardError if not)."""
    workers = workers or os.cpu_count() or 1
    _check_options(max_side, rows_per_group, rows_per_file, workers)
    classes, splits = source_splits(str(src))
    schema, start = shard_schema(classes), time.monotonic()
    window = max(rows_per_group, workers * _CHUNKSIZE * 4)
    counts: dict = {"splits": {}}
    with ProcessPoolExecutor(workers, mp_context=_mp_context()) as pool:
        pool.submit(int).result()  # forks every worker now, before the output's filesystem (S3 client threads)
        fs, root = writable_dest(str(dest))
        try:
            for split, (folder, samples) in splits.items():
                random.Random(seed).shuffle(samples)
                rows = decoded(pool, folder, samples, max_side, window)
                counts["splits"][split] = write_split(fs, _join(root, split), rows, schema, rows_per_group,
                                                      rows_per_file, name=split)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    seconds = time.monotonic() - start
    for key in ("images", "files", "bytes"):
        counts[key] = sum(c[key] for c in counts["splits"].values())
    counts.update(seconds=seconds, images_per_s=counts["images"] / max(seconds, 1e-9), classes=len(classes))
    return counts


def _mp_context() -> multiprocessing.context.BaseContext:
    """fork where there is one: forkserver and spawn leave a server and a resource tracker running after
    the call. The workers only read files and run Pillow, never pyarrow, and are forked before the output's
    filesystem exists (`convert`)."""
    return multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line's options."""
    parser = argparse.ArgumentParser(prog="python -m trainables.shard", description=__doc__.splitlines()[0])
    parser.add_argument("src", help="ImageFolder root with train/ and val/ (or test/)")
    parser.add_argument("dest", help="output folder or URI (s3://bucket/prefix)")
    parser.add_argument("--max-side", type=int, default=None, help="longer side at most this (default: keep)")
    parser.add_argument("--rows-per-group", type=int, default=256)
    parser.add_argument("--rows-per-file", type=int, default=8192)
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: CPU count)")
    parser.add_argument("--seed", type=int, default=0, help="the shuffle of rows before packing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the converter; 0 on success, 2 with one `error:` line otherwise."""
    args = parse_args(argv)
    try:
        counts = convert(args.src, args.dest, args.max_side, args.rows_per_group, args.rows_per_file,
                         args.workers, args.seed)
    except ShardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, pa.ArrowException) as exc:  # storage failing mid-way (the inputs were checked before)
        print(f"error: {args.dest}: {_oneline(exc)}", file=sys.stderr)
        return 2
    print(f"done: {counts['images']} images, {counts['files']} files, {counts['bytes']} bytes "
          f"({counts['bytes'] / 1e6:.1f} MB), "
          f"{counts['seconds']:.1f} s, {counts['images_per_s']:.0f} images/s", flush=True)
    return 0


if __name__ == "__main__":
    from trainables.shard import main as _main  # workers then unpickle trainables.shard's functions, not __main__'s

    sys.exit(_main())
