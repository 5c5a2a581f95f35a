"""Image datasets decoded once into uint8 tensors, from a local `data_dir` (`trainables.download` fetches them).

Loaders: `cifar10`, `cifar100` (torchvision's own pickled format, or `train.parquet`/`test.parquet`),
`tinyimagenet` (the standard `tiny-imagenet-200` folder), `imagefolder` (`train/` + `val/` or `test/`,
one sub-folder per class) and `parquet` (HF-style `img{bytes,path}` + `label`). Decoded tensors are
cached on disk (`$LAYERWISE_CACHE`, default `$XDG_CACHE_HOME/layerwise-study`, i.e. `~/.cache/…`) keyed
by the source files' names, sizes and bytes (read again only when their sizes or mtimes change), so a study's
trials and a run's workers decode each dataset once; a changed copy's new entry replaces its old one.
Datasets themselves default to `data/<dataset>` in that same per-user folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from trainables.cache import cache_dir, user_cache
from trainables.folders import is_uri
from trainables.safe_load import UnsafeFileError, load_plain

DATASETS = ("cifar10", "cifar100", "tinyimagenet", "imagefolder", "parquet", "imagenet")
STREAMED = ("imagefolder", "imagenet")  # datasets a trial can stream (trainables.stream), e.g. from a bucket
DEFAULT_IMAGE_SIZE = {"imagefolder": 64, "imagenet": 224}  # the square side images are decoded to, unless image_size
NATIVE_IMAGE_SIZE = {"cifar10": 32, "cifar100": 32, "tinyimagenet": 64}  # the square side of datasets image_size cannot change


def input_size(dataset: str, image_size: int | None) -> int | None:
    """The square side a trial's images have, known before any decode; None for `parquet` (its images' own)."""
    if dataset in DEFAULT_IMAGE_SIZE:
        return image_size or DEFAULT_IMAGE_SIZE[dataset]
    return NATIVE_IMAGE_SIZE.get(dataset)
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}

_LAYOUTS = {
    "cifar10": "torchvision's 'cifar-10-batches-py/' (data_batch_1..5, test_batch) or train.parquet + test.parquet",
    "cifar100": "torchvision's 'cifar-100-python/' (train, test, meta) or train.parquet + test.parquet",
    "tinyimagenet": ("'tiny-imagenet-200/' with wnids.txt, train/<wnid>/images/*.JPEG, "
                     "val/images/*.JPEG and val/val_annotations.txt"),
    "imagefolder": "'train/<class>/<image>' and 'val/<class>/<image>' (or 'test/<class>/<image>')",
    "parquet": "train.parquet and test.parquet with columns img{bytes,path} and label",
    "imagenet": ("ILSVRC-2012 as torchvision's ImageNet prepares it, 'train/<wnid>/*.JPEG' and 'val/<wnid>/*.JPEG' "
                 "(or the shards `python -m trainables.shard` makes of it); it is not downloaded (its licence): "
                 "obtain it at https://image-net.org/download.php (ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar, "
                 "ILSVRC2012_devkit_t12.tar.gz) and let torchvision.datasets.ImageNet(root, split=…) arrange it"),
}


class DataError(ValueError):
    """The data directory is missing or does not have the layout the dataset expects."""


def layout_error(dataset: str, data_dir: str | Path, problem: str) -> DataError:
    return DataError(f"{dataset} data at '{data_dir}': {problem}; expected layout: {_LAYOUTS[dataset]}")


@dataclass
class ImageData:
    """One split: images [N, 3, H, W] uint8, labels [N] int64, class names."""

    images: Tensor
    labels: Tensor
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Tensor) -> "ImageData":
        return ImageData(self.images[index], self.labels[index], self.classes)


@dataclass
class Dataset:
    train: ImageData
    test: ImageData
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    val: ImageData | None = None  # held out of the training images by a trial (`stratified_split`)
    digest: str = ""  # its source files' content hash (`_cache_entry`), where `load_dataset` read or decoded it

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    def limited(self, limit: int | None, test_limit: int | None) -> "Dataset":
        """Its `balanced_subset`s of `limit` training and `test_limit` test images (itself where both are None)."""
        if limit is None and test_limit is None:
            return self
        return Dataset(balanced_subset(self.train, limit), balanced_subset(self.test, test_limit), self.mean, self.std)

    def to_arrays(self, tensors: bool = False) -> dict[str, Any]:
        """Arrays and plain lists: NumPy for Ray's object store, where every actor reads them zero-copy, or
        tensors (`tensors=True`) for the decode cache, which torch reads back with `weights_only=True`."""
        arrays = (lambda t: t) if tensors else (lambda t: t.numpy())
        return {"train_images": arrays(self.train.images), "train_labels": arrays(self.train.labels),
                "test_images": arrays(self.test.images), "test_labels": arrays(self.test.labels),
                "classes": list(self.train.classes), "mean": list(self.mean), "std": list(self.std)}

    def nbytes(self) -> int:
        """The bytes of its arrays in the object store."""
        return sum(split.images.nbytes + split.labels.nbytes for split in (self.train, self.test))

    @classmethod
    def from_arrays(cls, arrays: dict[str, Any]) -> "Dataset":
        """The inverse of `to_arrays`, sharing the arrays' memory (read-only when they live in the object store)."""
        with warnings.catch_warnings():  # read-only object-store buffers: nothing writes into a dataset in place
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            tensor = torch.as_tensor
            return cls(ImageData(tensor(arrays["train_images"]), tensor(arrays["train_labels"]), arrays["classes"]),
                       ImageData(tensor(arrays["test_images"]), tensor(arrays["test_labels"]), arrays["classes"]),
                       tuple(arrays["mean"]), tuple(arrays["std"]))

    @property
    def image_size(self) -> int:
        return self.train.images.shape[-1]


# --- decoding ------------------------------------------------------------------------------------

def decode_image(blob: bytes, image_size: int | None = None):
    """One encoded image → [H, W, 3] uint8 NumPy array, optionally resized and centre-cropped to a square.

    Pillow rather than torchvision.io, whose image codecs are deprecated since torchvision 0.29.
    """
    import numpy as np
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(blob)) as img:
        img = img.convert("RGB")
        if image_size is not None and img.size != (image_size, image_size):
            img = ImageOps.fit(img, (image_size, image_size), Image.Resampling.BILINEAR)
        return np.asarray(img)


def _decode(blobs: list[bytes], image_size: int | None = None) -> Tensor:
    """Decode encoded images to [N, 3, H, W] uint8 (`decode_image` each)."""
    import numpy as np

    out = [decode_image(blob, image_size) for blob in blobs]
    shapes = {a.shape for a in out}
    if len(shapes) > 1:
        raise DataError(f"images have different sizes {sorted(shapes)[:3]}…; set image_size to resize them")
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def _read_files(paths: list[Path], image_size: int | None) -> Tensor:
    return _decode([p.read_bytes() for p in paths], image_size)


# --- loaders: each returns (train, test) ImageData ------------------------------------------------

def _torchvision_cifar(name: str, root: Path) -> tuple[ImageData, ImageData] | None:
    folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    if not (root / folder).is_dir():
        return None  # found before importing torchvision (1.7 s of a study's start here)
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    splits = []
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=False)
        except RuntimeError as err:  # torchvision's integrity check failed
            raise layout_error(name, root, f"torchvision could not read '{folder}' ({err})") from None
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        splits.append(ImageData(images, torch.tensor(ds.targets, dtype=torch.int64), list(ds.classes)))
    return splits[0], splits[1]


def _parquet_split(dataset: str, path: Path) -> ImageData:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise layout_error(dataset, path.parent, f"'{path.name}' not found")
    table = pq.read_table(path)
    if "img" not in table.column_names or "label" not in table.column_names:
        raise layout_error(dataset, path.parent, f"'{path.name}' has columns {table.column_names}")
    blobs = table.column("img").combine_chunks().field("bytes").to_pylist()
    labels = torch.tensor(table.column("label").to_pylist(), dtype=torch.int64)
    meta = (table.schema.metadata or {}).get(b"classes")
    classes = meta.decode().split(",") if meta else [str(i) for i in range(int(labels.max()) + 1)]
    return ImageData(_decode(blobs), labels, classes)


def _parquet(dataset: str, root: Path) -> tuple[ImageData, ImageData]:
    return _parquet_split(dataset, root / "train.parquet"), _parquet_split(dataset, root / "test.parquet")


def _tinyimagenet(root: Path) -> tuple[ImageData, ImageData]:
    if (root / "tiny-imagenet-200").is_dir():
        root = root / "tiny-imagenet-200"
    wnids_file, annotations = root / "wnids.txt", root / "val" / "val_annotations.txt"
    for needed in (wnids_file, annotations, root / "train"):
        if not needed.exists():
            raise layout_error("tinyimagenet", root, f"'{needed.relative_to(root)}' not found")
    wnids = wnids_file.read_text().split()
    index = {w: i for i, w in enumerate(wnids)}
    train_paths, train_labels = [], []
    for wnid in wnids:
        files = sorted((root / "train" / wnid / "images").glob("*"))
        if not files:
            raise layout_error("tinyimagenet", root, f"no images in 'train/{wnid}/images'")
        train_paths += files
        train_labels += [index[wnid]] * len(files)
    val_paths, val_labels = [], []
    for line in annotations.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 2:  # val/images is flat; the annotations file gives each image's class
            val_paths.append(root / "val" / "images" / fields[0])
            val_labels.append(index[fields[1]])
    side = NATIVE_IMAGE_SIZE["tinyimagenet"]
    return (ImageData(_read_files(train_paths, side), torch.tensor(train_labels), wnids),
            ImageData(_read_files(val_paths, side), torch.tensor(val_labels), wnids))


def _imagefolder(root: Path, image_size: int) -> tuple[ImageData, ImageData]:
    from torchvision.datasets.folder import find_classes, make_dataset

    test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise layout_error("imagefolder", root, "needs a 'train/' and a 'val/' or 'test/' folder")
    classes, class_to_idx = find_classes(str(root / "train"))
    splits = []
    for folder in (root / "train", test_dir):
        samples = make_dataset(str(folder), class_to_idx, extensions=tuple(_IMAGE_SUFFIXES))
        if not samples:
            raise layout_error("imagefolder", root, f"no images under '{folder.name}/'")
        images = _read_files([Path(p) for p, _ in samples], image_size)
        splits.append(ImageData(images, torch.tensor([c for _, c in samples]), classes))
    return splits[0], splits[1]


# --- cache + entry point --------------------------------------------------------------------------

def default_data_root() -> Path:
    """Where datasets live when neither --data-dir nor $LAYERWISE_DATA says otherwise."""
    return user_cache() / "data"


def data_dir_for(dataset: str, given: str | Path | None = None) -> str:
    """The dataset's folder: `given` (--data-dir), else $LAYERWISE_DATA/<dataset>, else <user cache>/data/<dataset>."""
    if given:
        return str(given) if is_uri(given) else str(Path(given).expanduser().resolve())
    root = os.environ.get("LAYERWISE_DATA") or default_data_root()
    return str((Path(root).expanduser() / dataset).resolve())


def _source_files(root: Path) -> list[tuple[str, os.stat_result]]:
    """Every file under `root`, as (path, stat), in a fixed order."""
    return [(os.path.join(dirpath, name), os.stat(os.path.join(dirpath, name)))
            for dirpath, _, files in sorted(os.walk(root)) for name in sorted(files)]


def _content_hash(files: list[tuple[str, os.stat_result]], root: Path) -> str:
    """SHA-256 of every file's name under `root`, size and bytes (CIFAR-10's 56 MB of parquet: 0.05 s here)."""
    digest = hashlib.sha256()
    for path, st in files:
        digest.update(f"{os.path.relpath(path, root)}|{st.st_size}|".encode())
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:12]


def _cache_entry(dataset: str, root: Path, image_size: int | None) -> Path:
    """The decode cache's file for these files: `<dataset>-<source>-<content>.pt`, where source hashes the loader,
    the resolved path and the image size, and content every source file's name, size and bytes (re-decode when the
    data changes; `_drop_stale` then removes the entry it replaces).

    The bytes are read only when the files' sizes and mtimes differ from those the source's stamp file
    (`<dataset>-<source>.stamp`) last saw: a copy made again with new mtimes and the same bytes — `cp` without
    `-p`, a job copying its data to a node's local disk, this project's CI VM re-provisioning its data each
    session (the first demo there read 19.2 s to its first trial, 7.3 s of it decoding) — finds its entry.
    The path is resolved before it is walked, so one dataset has one cache entry however it is spelled
    (through a symlink, `..`, relative). v3: the cache holds tensors and lists (`Dataset.to_arrays`), no
    pickled objects.
    """
    root = root.resolve()
    source = hashlib.sha1(f"v3|{dataset}|{root}|{image_size}".encode()).hexdigest()[:10]
    files = _source_files(root)
    stamp = hashlib.sha1("".join(f"{path}|{st.st_size}|{st.st_mtime_ns}\n" for path, st in files).encode()
                         ).hexdigest()[:12]
    stamp_file = cache_dir() / f"{dataset}-{source}.stamp"
    content = _stamped_content(stamp_file, stamp)
    if content is None:
        content = _content_hash(files, root)
        with contextlib.suppress(OSError):  # only a hint: without it the next lookup reads the bytes again
            _write_atomically(stamp_file, lambda tmp: tmp.write_text(f"{stamp} {content}\n"))
    return cache_dir() / f"{dataset}-{source}-{content}.pt"


def _stamped_content(stamp_file: Path, stamp: str) -> str | None:
    """The content hash `stamp_file` holds for `stamp` (None: another stamp, or no readable file)."""
    with contextlib.suppress(OSError, ValueError):
        seen, content = stamp_file.read_text().split()
        if seen == stamp:
            return content
    return None


def _write_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """`write` a temporary file beside `path`, then rename it there: a concurrent reader (a run's other workers)
    sees the old file or the new one whole, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a write cut short (a full disk) left the disk fuller still
        raise


def _drop_stale(entry: Path) -> None:
    """Remove the entries no lookup can find again: the same source's others (its data since changed) and the
    dataset's entries named by one hash (before 2026-12: a copy's every change left one) — each a whole decoded
    dataset (185 MB for CIFAR-10). A process still reading one keeps its open file."""
    dataset, source, _ = entry.stem.rsplit("-", 2)
    for pattern in (f"{dataset}-{source}-*.pt", f"{dataset}-{'[0-9a-f]' * 20}.pt"):
        for stale in entry.parent.glob(pattern):
            if stale != entry:
                stale.unlink(missing_ok=True)


def _channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.float().div_(255).transpose(0, 1).flatten(1)
    return tuple(x.mean(1).tolist()), tuple(x.std(1).tolist())


def _decode_dataset(dataset: str, root: Path, image_size: int | None) -> Dataset:
    if dataset in ("cifar10", "cifar100"):
        splits = _torchvision_cifar(dataset, root) or _parquet(dataset, root)
    elif dataset == "parquet":
        splits = _parquet(dataset, root)
    elif dataset == "tinyimagenet":
        splits = _tinyimagenet(root)
    else:
        splits = _imagefolder(root, image_size or DEFAULT_IMAGE_SIZE["imagefolder"])
    train, test = splits
    if train.images.shape[1:] != test.images.shape[1:]:
        raise layout_error(dataset, root, f"train images {tuple(train.images.shape[1:])} and test images "
                                          f"{tuple(test.images.shape[1:])} differ in size")
    mean, std = _channel_stats(train.images)
    return Dataset(train, test, mean, std)


def check_data_dir(dataset: str, data_dir: str | Path | None) -> Path:
    """Validate the dataset name and that `data_dir` exists; return it as a Path (cheap, no decoding)."""
    if dataset not in DATASETS:
        raise DataError(f"dataset: unknown {dataset!r}; choose one of {', '.join(DATASETS)}")
    if is_uri(data_dir):  # a bucket: listed (and checked) by trainables.stream
        if dataset not in STREAMED:
            raise DataError(f"data_dir: {dataset} is read from a local folder; a URI ({data_dir}) streams "
                            f"{' or '.join(STREAMED)} only")
        return Path()
    if data_dir is None or not Path(data_dir).is_dir():
        raise layout_error(dataset, data_dir, "directory not found")
    return Path(data_dir)


def load_dataset(dataset: str, data_dir: str | Path | None, image_size: int | None = None,
                 on_decode: Callable[[Path, Path], None] | None = None) -> Dataset:
    """Both splits of `dataset` from `data_dir` as uint8 tensors, decoded once and cached on disk; `on_decode`
    (data folder, cache entry) is told before a decode, the wait a first study of a copy of the data pays."""
    root = check_data_dir(dataset, data_dir)
    path = _cache_entry(dataset, root, image_size)
    digest = path.stem.rsplit("-", 1)[1]
    if path.is_file():
        try:
            return dataclasses.replace(Dataset.from_arrays(load_plain(path)), digest=digest)
        except UnsafeFileError:  # anything but tensors and plain lists: refused, never decoded over
            raise
        except Exception:  # noqa: BLE001 - a truncated or corrupt entry fails in torch's many ways: decode again
            pass
    if on_decode is not None:
        on_decode(root, path)
    data = dataclasses.replace(_decode_dataset(dataset, root, image_size), digest=digest)
    _keep(data, path)
    return data


def _keep(data: Dataset, path: Path) -> None:
    """Write the decoded dataset to its cache entry, or warn why not: the cache saves later runs the decode, and
    this run has its data in memory either way."""
    try:
        _write_atomically(path, lambda tmp: torch.save(data.to_arrays(tensors=True), tmp))
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError ("iostream error")
        free, needed = shutil.disk_usage(path.parent).free, data.nbytes()
        why = (f"{free / 2**20:,.1f} MiB free there, {needed / 2**20:,.1f} MiB needed" if free < needed
               else f"{type(err).__name__}: {' '.join(str(err).split())}")
        warnings.warn(f"data: the decoded copy could not be kept at {path} ({why}): this run goes on from memory, "
                      "and the next decodes again", stacklevel=3)
        return
    _drop_stale(path)


def balanced_subset(data: ImageData, limit: int | None, seed: int = 0) -> ImageData:
    """A class-balanced subset of `limit` examples (remainder spread over the first classes), fixed by `seed`."""
    if limit is None or limit >= len(data):
        return data
    if limit < 1:
        raise ValueError(f"limit: must be >= 1, got {limit}")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data), generator=gen)
    num_classes = len(data.classes)
    quota = torch.full((num_classes,), limit // num_classes)
    quota[: limit % num_classes] += 1
    picked = []
    for c in range(num_classes):
        members = order[data.labels[order] == c]
        picked.append(members[: int(quota[c])])
    index = torch.cat(picked).sort().values
    return data.subset(index)


def check_validation_size(size: int, pool: int) -> None:
    """A validation split must leave training images: ValueError naming `val_size` otherwise."""
    if not 0 <= size < pool:
        raise ValueError(f"val_size: must be in [0, {pool}) for {pool} training images, got {size}")


def stratified_split(data: ImageData, size: int, seed: int) -> tuple[ImageData, ImageData]:
    """(the rest, `size` held-out examples): each class keeps its share of `data` (largest remainders round),
    the examples within a class drawn by `seed`."""
    check_validation_size(size, len(data))
    counts = torch.bincount(data.labels, minlength=len(data.classes)).double()
    exact = counts * size / len(data)
    quota = exact.floor().long()
    quota[(exact - quota).argsort(descending=True, stable=True)[: size - int(quota.sum())]] += 1
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    held = torch.cat([order[data.labels[order] == c][: int(quota[c])] for c in range(len(data.classes))])
    keep = torch.ones(len(data), dtype=torch.bool)
    keep[held] = False
    return data.subset(keep.nonzero().squeeze(1)), data.subset(held.sort().values)
