"""Streaming data: datasets larger than Ray's object store, read and decoded by each trial, every epoch.

The driver lists the images once (`build_catalog`: file names or parquet shard rows, and labels — never
pixels) and puts that catalog in the object store. Each trial decodes and augments its images in
torch `DataLoader` worker processes: the trial's own CPUs beyond the first (`decode_workers`), so Tune's
concurrency never competes with a data executor it does not count (Ray issues 29662, 24304). Why not
Ray Data: `python -m trainables.bench --data …` measures both on the same files and CPUs (README, "Large
datasets"); besides, a trial's batches here are a pure function of (seed, epoch, rank), which `--resume`
and the exact per-epoch coverage across DDP workers rely on.

Sources: a local or shared folder, or a URI (`s3://…`, `gs://…`) read through `pyarrow.fs`; layouts:
an ImageFolder / ImageNet (`train/<class>/<image>`, `val/<class>/<image>`), or the shards
`python -m trainables.shard` writes (`train/part-*.parquet`, `val/part-*.parquet`).
"""

from __future__ import annotations

import functools
import hashlib
import io
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trainables import shard
from trainables.batches import Shard, derived_seed, eval_indices, generator
from trainables.data import DEFAULT_IMAGE_SIZE, DataError, decode_image, layout_error
from trainables.folders import is_uri

DATA_PATHS = ("auto", "memory", "stream")  # the `data_path` setting
SOURCE_IMAGES = ("imagenet",)  # augmentation that needs the source images (RandomResizedCrop): always streamed
CATALOG_KEY = "_stream_catalog"  # marks a catalog (not decoded arrays) in Ray's object store
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # torchvision's reference scripts
EVAL_RESIZE = 256 / 224  # ImageNet evaluation: resize the shorter side to 256, centre crop 224 (and scaled)
SHUFFLE_WINDOW = 8  # shards: rows are shuffled within windows of this many row groups (each read once)


def filesystem(root: str):
    """(pyarrow filesystem, path inside it) for a local folder or a URI."""
    return shard.filesystem_for(root)


# --- the catalog: which images, never their pixels ------------------------------------------------

@dataclass
class ImageList:
    """One split as references: `name(file[i])` holds image i (row `row[i]` of row group `group[i]` of a
    shard, or the whole file when `row[i]` is -1); duck-types `data.ImageData` for subsets and splits."""

    # UTF-8 paths in one NumPy bytes array, not a list of str: a forked DataLoader process touching 1.28M
    # Python strings copies their pages (refcounts) — the classic per-worker copy of a list-backed dataset
    files: np.ndarray
    file: Tensor
    group: Tensor
    row: Tensor
    labels: Tensor
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Tensor) -> "ImageList":
        return ImageList(self.files, self.file[index], self.group[index], self.row[index], self.labels[index],
                         self.classes)

    def name(self, f: int) -> str:
        return self.files[f].decode()

    @property
    def sharded(self) -> bool:
        return bool(len(self.row)) and bool((self.row >= 0).any())

    def source(self, i: int) -> str:
        """A readable name of image i, for errors."""
        name = self.name(int(self.file[i]))
        return name if int(self.row[i]) < 0 else f"{name} (row group {int(self.group[i])}, row {int(self.row[i])})"


@dataclass
class Catalog:
    """Both splits of a streamed dataset, where they are read from and how they are augmented."""

    dataset: str
    root: str
    train: ImageList
    test: ImageList
    image_size: int
    augment: str  # "imagenet": RandomResizedCrop + flip on the source image; "crop_flip": decoded at size, pad-crop
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    def decoded_bytes(self) -> int:
        """What decoding both splits at `image_size` would take (uint8, 3 channels)."""
        return (len(self.train) + len(self.test)) * 3 * self.image_size ** 2

    @property
    def digest(self) -> str:
        """A hash of what it lists (each split's file names, row groups, rows and labels), not of the images'
        bytes, which a streamed dataset is too large to read ahead (`data.Dataset.digest` hashes a decoded one's)."""
        digest = hashlib.sha256()
        for split in (self.train, self.test):
            digest.update(split.files.tobytes())
            for values in (split.file, split.group, split.row, split.labels):
                digest.update(values.numpy().tobytes())
        return digest.hexdigest()[:12]

    def to_arrays(self) -> dict[str, Any]:
        """NumPy arrays and plain values for Ray's object store (ImageNet: ~140 MB as 1.33M files, ~45 MB as shards)."""
        out: dict[str, Any] = {CATALOG_KEY: True, "dataset": self.dataset, "root": self.root,
                               "image_size": self.image_size, "augment": self.augment,
                               "mean": list(self.mean), "std": list(self.std), "classes": list(self.train.classes)}
        for name, split in (("train", self.train), ("test", self.test)):
            out[f"{name}_files"] = split.files
            for key in ("file", "group", "row", "labels"):
                out[f"{name}_{key}"] = getattr(split, key).numpy()
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, Any]) -> "Catalog":
        def split(name: str) -> ImageList:
            tensors = [torch.as_tensor(np.asarray(arrays[f"{name}_{k}"])) for k in ("file", "group", "row", "labels")]
            return ImageList(np.asarray(arrays[f"{name}_files"]), *tensors, list(arrays["classes"]))

        return cls(arrays["dataset"], arrays["root"], split("train"), split("test"), int(arrays["image_size"]),
                   arrays["augment"], tuple(arrays["mean"]), tuple(arrays["std"]))


@dataclass
class StreamedData:
    """A trial's splits of a streamed dataset (references; `data.Dataset`'s counterpart)."""

    catalog: Catalog
    train: ImageList
    test: ImageList
    val: ImageList | None = None

    num_classes = property(lambda self: self.catalog.num_classes)
    image_size = property(lambda self: self.catalog.image_size)
    mean = property(lambda self: self.catalog.mean)
    std = property(lambda self: self.catalog.std)


def streams(dataset: str, data_dir: str | None, data_path: str) -> bool:
    """Whether a run not placed by a study (which decides `auto` by size) streams its data."""
    return data_path == "stream" or (data_path == "auto" and (dataset in SOURCE_IMAGES or is_uri(data_dir)))


def paths_array(paths: list[str]) -> np.ndarray:
    """Paths as one NumPy array of UTF-8 bytes (`ImageList.files`)."""
    return np.array([p.encode() for p in paths], dtype=bytes)


def is_catalog(arrays: Any) -> bool:
    return isinstance(arrays, dict) and bool(arrays.get(CATALOG_KEY))


def build_catalog(dataset: str, root: str, image_size: int | None = None) -> Catalog:
    """List a streamable dataset's images (folders or shards, local or a URI); DataError naming the layout."""
    from pyarrow.fs import FileType

    fs, base = filesystem(root)
    if fs.get_file_info(base).type == FileType.NotFound:
        raise layout_error(dataset, root, "directory not found")
    splits = [_split_dir(fs, base, names, dataset, root) for names in (("train",), ("val", "test"))]
    if any(s is None for s in splits):
        raise layout_error(dataset, root, "needs a 'train/' and a 'val/' (or 'test/') folder of class folders "
                                          "or parquet shards")
    train, classes = _list_split(fs, splits[0], dataset, root, None)
    test, _ = _list_split(fs, splits[1], dataset, root, classes)
    augment = "imagenet" if dataset in SOURCE_IMAGES else "crop_flip"
    return Catalog(dataset, root, train, test, image_size or DEFAULT_IMAGE_SIZE[dataset], augment)


def _split_dir(fs, base: str, names: tuple[str, ...], dataset: str, root: str) -> str | None:
    from pyarrow.fs import FileType

    for name in names:
        path = f"{base.rstrip('/')}/{name}"
        if fs.get_file_info(path).type == FileType.Directory:
            return path
    return None


def _list_split(fs, path: str, dataset: str, root: str, classes: list[str] | None) -> tuple[ImageList, list[str]]:
    from pyarrow.fs import FileSelector, FileType

    infos = [i for i in fs.get_file_info(FileSelector(path, recursive=True)) if i.type == FileType.File]
    shards = sorted(i.path for i in infos if i.path.endswith(".parquet"))
    if shards and not any(i.base_name == shard.DONE_MARKER for i in infos):
        raise layout_error(dataset, root, f"the shards in '{path}' have no '{shard.DONE_MARKER}': their "
                                          "conversion (python -m trainables.shard) did not finish")
    if shards:
        return _list_shards(fs, shards, dataset, root, classes)
    images = sorted(i.path for i in infos if i.path.lower().endswith(shard.IMAGE_EXTENSIONS)
                    and "/" in i.path[len(path) + 1:])
    found = sorted({p[len(path) + 1:].split("/", 1)[0] for p in images})
    classes = classes or found
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(found) - set(index))
    if not images or unknown:
        problem = f"no images in class folders under '{path}'" if not images else \
            f"'{path}' has class folders {unknown[:3]} that train/ does not"
        raise layout_error(dataset, root, problem)
    labels = torch.tensor([index[p[len(path) + 1:].split("/", 1)[0]] for p in images])
    n = len(images)
    return ImageList(paths_array(images), torch.arange(n), torch.zeros(n, dtype=torch.long), torch.full((n,), -1), labels,
                     classes), classes


def _list_shards(fs, shards: list[str], dataset: str, root: str, classes: list[str] | None
                 ) -> tuple[ImageList, list[str]]:
    import pyarrow.parquet as pq

    files, groups, rows, labels = [], [], [], []
    for f, name in enumerate(shards):
        with fs.open_input_file(name) as handle:
            parquet = pq.ParquetFile(handle)
            if not classes and shard.CLASSES_KEY in (parquet.schema_arrow.metadata or {}):
                classes = shard.classes_of(parquet.schema_arrow)
            for g in range(parquet.num_row_groups):
                got = parquet.read_row_group(g, columns=[shard.LABEL_COLUMN]).column(shard.LABEL_COLUMN).to_numpy()
                files.append(np.full(len(got), f)), groups.append(np.full(len(got), g))
                rows.append(np.arange(len(got))), labels.append(got)
    if not classes:
        raise layout_error(dataset, root, f"shard '{shards[0]}' has no '{shard.CLASSES_KEY.decode()}' metadata")
    cat = lambda parts: torch.from_numpy(np.concatenate(parts).astype(np.int64))  # noqa: E731
    return ImageList(paths_array(shards), cat(files), cat(groups), cat(rows), cat(labels), classes), classes


# --- reading and decoding one image (in a DataLoader worker) --------------------------------------

class ImageReader:
    """The encoded bytes of image i: a file, or a row of a shard's row group (the last few groups cached)."""

    def __init__(self, images: ImageList, root: str, cached_groups: int = SHUFFLE_WINDOW + 2):
        self.images, self.root, self.cached_groups = images, root, cached_groups
        self._groups: OrderedDict[tuple[int, int], list[bytes]] = OrderedDict()
        # per-image cost, measured here (2 cores, 64 px JPEGs, 234 µs in all): 4 tensor scalar reads 4.4 µs,
        # pyarrow's local open + read 9.2 µs, vs NumPy scalars and the builtin open() at about a third of that
        self.where = torch.stack([images.file, images.group, images.row], 1).numpy()
        self.local = not is_uri(root)

    @functools.cached_property
    def fs(self):
        return filesystem(self.root)[0]  # opened in the process that reads (S3 clients do not survive a fork)

    def __call__(self, i: int) -> bytes:
        f, g, r = self.where[i].tolist()
        if r < 0 and self.local:
            with open(self.images.name(f), "rb") as handle:
                return handle.read()
        if r < 0:
            with self.fs.open_input_file(self.images.name(f)) as handle:
                return handle.read()
        if (f, g) not in self._groups:
            self._groups[(f, g)] = self._read_group(f, g)
            while len(self._groups) > self.cached_groups:
                self._groups.popitem(last=False)
        return self._groups[(f, g)][r]

    def _read_group(self, f: int, g: int) -> list[bytes]:
        import pyarrow.parquet as pq

        with self.fs.open_input_file(self.images.name(f)) as handle:
            column = pq.ParquetFile(handle).read_row_group(g, columns=[shard.IMAGE_COLUMN]).column(shard.IMAGE_COLUMN)
        return column.combine_chunks().field("bytes").to_pylist()


@dataclass
class BadImage:
    """An image that could not be read or decoded (the main process raises it, naming the file)."""

    source: str
    problem: str


def imagenet_train(blob: bytes, size: int, seed: int) -> np.ndarray:
    """RandomResizedCrop(size, scale (0.08, 1)) + horizontal flip, drawn from `seed` (torchvision's transforms)."""
    from PIL import Image
    from torchvision.transforms import RandomResizedCrop
    from torchvision.transforms import functional as F

    torch.manual_seed(seed)  # the transforms draw from torch's generator: one seed per (seed, epoch, image)
    with Image.open(io.BytesIO(blob)) as img:
        img = img.convert("RGB")
        top, left, h, w = RandomResizedCrop.get_params(img, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
        img = F.resized_crop(img, top, left, h, w, [size, size], antialias=True)
        if torch.rand(1).item() < 0.5:
            img = F.hflip(img)
        return np.asarray(img)


def imagenet_eval(blob: bytes, size: int) -> np.ndarray:
    """Resize the shorter side to size·256/224, centre crop size×size."""
    from PIL import Image
    from torchvision.transforms import functional as F

    with Image.open(io.BytesIO(blob)) as img:
        img = F.resize(img.convert("RGB"), [round(size * EVAL_RESIZE)], antialias=True)
        return np.asarray(F.center_crop(img, [size, size]))


class StreamDataset(torch.utils.data.Dataset):
    """Item i → (uint8 [3, S, S], label, i), decoded (and, for ImageNet's training split, augmented);
    a `BadImage` instead when the image cannot be read."""

    def __init__(self, catalog: Catalog, images: ImageList, train: bool, seed: int = 0):
        self.catalog, self.images, self.train, self.seed, self.epoch = catalog, images, train, seed, 0
        self.read = ImageReader(images, catalog.root)
        self.labels = images.labels.numpy()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        size = self.catalog.image_size
        try:
            blob = self.read(i)
            if self.catalog.augment != "imagenet":
                pixels = decode_image(blob, size)  # as the object-store path decodes; augmented on the device
            elif self.train:
                pixels = imagenet_train(blob, size, derived_seed(self.seed, self.epoch, i))
            else:
                pixels = imagenet_eval(blob, size)
        except Exception as err:  # noqa: BLE001 - any reader or codec failure names the image, not the study
            return BadImage(self.images.source(i), f"{type(err).__name__}: {err}")
        return torch.from_numpy(np.array(pixels)).permute(2, 0, 1), int(self.labels[i]), i  # Pillow's are read-only


def collate(items: list) -> Any:
    """Stack a batch, or pass its first `BadImage` through."""
    bad = next((item for item in items if isinstance(item, BadImage)), None)
    if bad is not None:
        return bad
    images, labels, ids = zip(*items)
    return torch.stack(images), torch.tensor(labels), torch.tensor(ids)


# --- epoch order and sharding ---------------------------------------------------------------------

def epoch_order(images: ImageList, seed: int, epoch: int, window: int = SHUFFLE_WINDOW) -> Tensor:
    """The epoch's order of all images, a function of (seed, epoch) alone.

    Files: a uniform permutation — the object-store path's very order (`batches.Shard.epoch`). Shards: row
    groups permuted, then rows shuffled within windows of `window` groups (a shuffle buffer made exact), so a
    worker reads each row group about once per epoch instead of once per image.
    """
    gen = generator(seed, epoch)
    if not images.sharded:
        return torch.randperm(len(images), generator=gen)
    keys = images.file * (int(images.group.max()) + 1) + images.group
    blocks, block_of = torch.unique(keys, return_inverse=True)
    by_block = torch.argsort(block_of, stable=True)
    sizes = torch.bincount(block_of, minlength=len(blocks))
    starts = torch.cumsum(sizes, 0) - sizes
    perm = torch.randperm(len(blocks), generator=gen)
    pieces = []
    for w in range(0, len(perm), window):
        members = torch.cat([by_block[starts[b]:starts[b] + sizes[b]] for b in perm[w:w + window].tolist()])
        pieces.append(members[torch.randperm(len(members), generator=gen)])
    return torch.cat(pieces)


def decode_workers() -> int:
    """DataLoader processes of this trial worker: its Ray CPUs beyond the one that trains (0: decode in-process,
    also outside Ray). The decoders are inside the trial's own CPU reservation, never beside it."""
    import ray

    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1) if ray.is_initialized() else 1
    except Exception:  # noqa: BLE001 - the driver, not a worker: no assignment
        cpus = 1
    return decoders_for(cpus)


def decoders_for(cpus: float) -> int:
    """Decode processes beside the training one for a worker of `cpus` CPUs."""
    return max(int(cpus) - 1, 0)


@dataclass
class StreamFeed:
    """This worker's batches of a streamed dataset: the training split per epoch, evaluation splits whole."""

    catalog: Catalog
    train: ImageList
    splits: dict[str, ImageList]  # evaluation splits by prefix ("val", "test")
    shard: Shard  # the epoch's steps and this worker's rows of each global batch
    workers: int
    device: torch.device
    wait_seconds: float = field(default=0.0, init=False)  # the last pass's time blocked on data
    train_wait_share: float = field(default=0.0, init=False)  # of the last training epoch's wall time

    def _loader(self, dataset: StreamDataset, batches: list[list[int]]) -> Iterator:
        """Batches of `dataset` in the given order, decoded by this worker's DataLoader processes."""
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=batches, num_workers=self.workers, collate_fn=collate,
            pin_memory=self.device.type == "cuda", prefetch_factor=4 if self.workers else None)
        self.wait_seconds = 0.0
        waited = time.perf_counter()
        for batch in loader:
            if isinstance(batch, BadImage):
                raise DataError(f"{batch.source}: cannot read image ({batch.problem})")
            self.wait_seconds += time.perf_counter() - waited
            images, labels, ids = (t.to(self.device, non_blocking=True) for t in batch)
            yield images, labels, ids
            waited = time.perf_counter()

    def epoch(self, epoch: int) -> Iterator[tuple[int, Tensor, Tensor, Tensor]]:
        """(step, uint8 images, labels, image ids) of this worker's rows of every global batch of `epoch`."""
        plan = self.shard
        order = epoch_order(self.train, plan.seed, epoch)
        batches = [order[s * plan.global_batch:(s + 1) * plan.global_batch][plan.rows].tolist()
                   for s in range(plan.steps)]
        dataset = StreamDataset(self.catalog, self.train, train=True, seed=plan.seed)
        dataset.epoch = epoch
        started = time.perf_counter()
        for step, (images, labels, ids) in enumerate(self._loader(dataset, batches)):
            yield step, images, labels, ids
        self.train_wait_share = self.wait_seconds / max(time.perf_counter() - started, 1e-9)

    def evaluation(self, prefix: str, batch: int = 250) -> Iterator[tuple[Tensor, Tensor]]:
        """This worker's strided share of split `prefix`, in batches, not augmented."""
        split = self.splits[prefix]
        mine = eval_indices(len(split), self.shard.rank, self.shard.world_size).tolist()
        dataset = StreamDataset(self.catalog, split, train=False)
        for images, labels, _ in self._loader(dataset, [mine[i:i + batch] for i in range(0, len(mine), batch)]):
            yield images, labels
