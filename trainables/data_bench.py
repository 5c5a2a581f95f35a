"""Data-path benchmarks on an image folder: streaming throughput against torchvision's and Ray Data's loaders,
a streaming trial's memory at N and 2N images, and epoch time from memory vs streamed.

    python -m trainables.bench --data DIR [--dataset imagefolder|imagenet] [--image-size 64] [--rounds 5]
                               [--workers K] [--batch-size 64] [--limit N] [--no-throughput] [--no-memory]
                               [--no-epochs]

Throughput: one epoch of decoded batches of the training split (no model) by our `StreamFeed` with K decode
processes, by torchvision's `ImageFolder` + `DataLoader(num_workers=K, shuffle=True)` and by Ray Data
(`read_binary_files(shuffle="files")` + `map_batches`, iterated with `iter_torch_batches` in this process, on
a local Ray of K + 1 CPUs) — every side decoding with the very function a trial uses (`decode_image`, or ImageNet's
RandomResizedCrop + flip), each loader with its library's defaults. Memory: the peak RSS of a fresh trial
process and its decode processes (psutil, sampled every 20 ms) streaming one epoch of a ResNet-8 (width 16)
with SGD over half the images (N) and all of them (2N), and the object-store bytes of the streamed
dataset's catalog at each size (`ray.put`'s object size). Epochs: that model's training epoch with lars
from memory (`MemoryFeed`) vs streamed (`StreamedFeed`), both with K + 1 torch threads (a trial's CPUs).
The compared sides run in rounds, their order reversed every other round; ratios are per round, printed as
median and interquartile range, and a target is met only if the whole IQR meets it. The page cache is
warmed (and every loader's processes started once) by an untimed pass first.

Measured on this repository's 2-core machine, otherwise idle (8,000 JPEGs 96 → 64 px, K = 1, batch 64, 5 rounds):
ours ÷ torchvision 1.027 IQR [0.967, 1.030], ours ÷ Ray Data 2.027 [1.991, 2.192]; RSS 2N/N 0.997 [0.986, 1.013]
(1,711 / 1,696 MiB; a decoded copy would add 47 MiB); epochs streaming ÷ memory 1.225 [1.207, 1.227].
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import torch
from torch import nn

from optim import build_optimizer
from trainables.augment import normalize
from trainables.batches import Shard
from optim.bench import spread
from trainables.data import ImageData, Dataset, DataError, balanced_subset, decode_image
from trainables.feeds import MemoryFeed, StreamedFeed
from trainables.models import build_model
from trainables.stream import (Catalog, ImageList, StreamDataset, StreamFeed, build_catalog, collate, imagenet_train,
                               is_uri)

REPO = Path(__file__).resolve().parents[1]
THROUGHPUT_TARGET = 0.9  # ours ÷ torchvision's images/s, by the whole IQR
RSS_TARGET = 1.2  # peak RSS at 2N ÷ at N images, by the whole IQR
SAMPLE_S = 0.02  # psutil's sampling period of a trial process tree's RSS
MIB = 2**20
MODEL_WIDTH = 16  # ResNet-8's default width, in the trial and epoch lines


# --- the arms of the throughput comparison: one epoch of decoded batches each, images/s -------------

class Decode:
    """Encoded bytes → uint8 [3, S, S], as `StreamDataset` decodes a training image (picklable, for workers)."""

    def __init__(self, size: int, augment: str):
        self.size, self.augment = size, augment

    def __call__(self, blob: bytes) -> torch.Tensor:
        pixels = (imagenet_train(blob, self.size, random.getrandbits(62)) if self.augment == "imagenet"
                  else decode_image(blob, self.size))
        return torch.from_numpy(np.array(pixels)).permute(2, 0, 1)


def read_bytes(path: str) -> bytes:
    """ImageFolder's `loader`: the file's bytes, decoded by the transform."""
    with open(path, "rb") as handle:
        return handle.read()


def paths(images: ImageList) -> list[str]:
    """The files of `images` (a local folder's), in order."""
    return [images.name(f) for f in images.file.tolist()]


def images_per_second(batches: Iterable, count: Callable[[object], int]) -> float:
    """Images/s of one pass over `batches` (started inside the timing: loaders start their workers lazily)."""
    start, images = time.perf_counter(), 0
    for batch in batches:
        images += count(batch)
    return images / (time.perf_counter() - start)


def ours(catalog: Catalog, train: ImageList, batch: int, workers: int) -> Callable[[int], float]:
    """Our streaming path: a trial's `StreamFeed`, one epoch per call."""
    feed = StreamFeed(catalog, train, {}, Shard(len(train), batch, 0, 1, 0), workers, torch.device("cpu"))
    return lambda epoch: images_per_second(feed.epoch(epoch), lambda b: len(b[1]))


def torchvision_folder(catalog: Catalog, train: ImageList, batch: int, workers: int) -> Callable[[int], float]:
    """torchvision's `ImageFolder` (bytes read by `loader`, decoded by the transform) + a shuffling `DataLoader`."""
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(str(Path(catalog.root) / "train"), loader=read_bytes,
                         transform=Decode(catalog.image_size, catalog.augment))
    where = {os.path.realpath(path): i for i, (path, _) in enumerate(folder.samples)}
    subset = torch.utils.data.Subset(folder, [where[os.path.realpath(path)] for path in paths(train)])
    loader = torch.utils.data.DataLoader(subset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True)
    return lambda epoch: images_per_second(loader, lambda b: len(b[1]))


def decode_rows(rows: dict, size: int, augment: str, index: dict[str, int]) -> dict[str, np.ndarray]:
    """Ray Data's `map_batches` function: file bytes → images [n, 3, S, S] and labels (the class folder's)."""
    decode = Decode(size, augment)
    return {"image": np.stack([decode(blob).numpy() for blob in rows["bytes"]]),
            "label": np.array([index[Path(path).parent.name] for path in rows["path"]])}


def ray_data(catalog: Catalog, train: ImageList, batch: int, workers: int) -> Callable[[int], float]:
    """Ray Data: the same files read by `read_binary_files` (file order shuffled every epoch), decoded by
    `map_batches` tasks, iterated with `iter_torch_batches` here (Ray as started by `local_ray`)."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # two lines per epoch on starting and finishing
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")  # iter_torch_batches' own
    index = {name: i for i, name in enumerate(catalog.train.classes)}
    dataset = ray.data.read_binary_files(paths(train), include_paths=True, shuffle="files").map_batches(
        decode_rows, batch_size=batch, fn_kwargs=dict(size=catalog.image_size, augment=catalog.augment, index=index))
    return lambda epoch: images_per_second(dataset.iter_torch_batches(batch_size=batch, drop_last=True),
                                           lambda b: len(b["label"]))


THROUGHPUT_ARMS = {"ours (StreamFeed)": ours, "torchvision ImageFolder+DataLoader": torchvision_folder,
                   "Ray Data read_binary_files+map_batches": ray_data}
SHORT = {"torchvision ImageFolder+DataLoader": "torchvision", "Ray Data read_binary_files+map_batches": "Ray Data"}


def interleaved(arms: dict[str, Callable[[int], float]], rounds: int) -> dict[str, list[float]]:
    """Each arm's figure per round after one untimed warm-up call each, the order reversed every other round."""
    for arm in arms.values():
        arm(0)
    measured: dict[str, list[float]] = {name: [] for name in arms}
    for round_ in range(rounds):
        for name in list(arms)[:: -1 if round_ % 2 else 1]:
            measured[name].append(arms[name](round_ + 1))
    return measured


def ratio_text(ratios: list[float]) -> str:
    median, low, high = spread(ratios)
    return f"{median:.3f} IQR [{low:.3f}, {high:.3f}]; rounds: " + " ".join(f"{r:.3f}" for r in ratios)


def throughput_lines(catalog: Catalog, train: ImageList, batch: int, workers: int, rounds: int) -> list[str]:
    """Images/s of each loader over the same files with the same decode processes, and ours ÷ each."""
    if is_uri(catalog.root) or train.sharded:
        return ["  throughput: skipped (torchvision's ImageFolder and read_binary_files compare on a local "
                "image folder; this one is parquet shards or a URI)"]
    local_ray(workers)
    arms = {name: make(catalog, train, batch, workers) for name, make in THROUGHPUT_ARMS.items()}
    measured = interleaved(arms, rounds)
    mine = measured.pop("ours (StreamFeed)")
    lines = [f"  throughput, images/s (median of rounds): ours (StreamFeed) {statistics.median(mine):.0f}, "
             + ", ".join(f"{name} {statistics.median(v):.0f}" for name, v in measured.items())]
    for name, theirs in measured.items():
        ratios = [a / b for a, b in zip(mine, theirs)]
        met = spread(ratios)[1] >= THROUGHPUT_TARGET
        target = f" (target >= {THROUGHPUT_TARGET}: {'met' if met else 'NOT met'} by the whole IQR)"
        lines.append(f"  throughput ours / {SHORT[name]}: {ratio_text(ratios)}"
                     + (target if SHORT[name] == "torchvision" else " (> 1: ours faster)"))
    return lines


# --- memory: a streaming trial's peak RSS and the catalog's object-store bytes at N and 2N images ----

def stream_trial(spec_file: str) -> None:
    """A trial process (run by `peak_rss` in a fresh interpreter): one streamed epoch of ResNet-8
    with SGD; prints its own and its decode processes' `ru_maxrss` (KiB) as JSON."""
    spec = json.loads(Path(spec_file).read_text())
    with open(spec["catalog"], "rb") as handle:  # written by this benchmark just before
        catalog = Catalog.from_arrays(pickle.load(handle))
    torch.set_num_threads(spec["threads"])
    shard = Shard(len(catalog.train), spec["batch"], 0, 1, 0)
    feed = StreamedFeed(StreamFeed(catalog, catalog.train, {}, shard, spec["workers"], torch.device("cpu")), 0)
    model = small_model(catalog)
    train_epoch(feed, 0, model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), catalog.mean, catalog.std)
    print(json.dumps({"self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))


def peak_rss(catalog: Catalog, batch: int, workers: int, threads: int) -> tuple[float, float]:
    """(peak RSS summed over a fresh trial process and its decode processes, the trial process's own
    `ru_maxrss`), in MiB, streaming one epoch of `catalog`'s training split."""
    with tempfile.TemporaryDirectory() as folder:
        spec = Path(folder) / "spec.json"
        with open(Path(folder) / "catalog.pkl", "wb") as handle:
            pickle.dump(catalog.to_arrays(), handle)
        spec.write_text(json.dumps(dict(catalog=handle.name, batch=batch, workers=workers, threads=threads)))
        code = "import sys; from trainables.data_bench import stream_trial; stream_trial(sys.argv[1])"
        child = subprocess.Popen([sys.executable, "-c", code, str(spec)], cwd=REPO, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        peak = tree_peak(child)
        out, err = child.communicate()
    if child.returncode != 0:
        raise SystemExit(f"error: the streaming trial process failed ({child.returncode}): {err.strip()[-2000:]}")
    return peak / MIB, json.loads(out.splitlines()[-1])["self"] / 1024


def tree_peak(child: subprocess.Popen) -> int:
    """The largest RSS (bytes) that `child` and its descendants held together, sampled until it exits."""
    root, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        total = 0
        try:
            for proc in (root, *root.children(recursive=True)):
                total += proc.memory_info().rss
        except psutil.Error:  # a decode process exited between the listing and its reading
            pass
        peak = max(peak, total)
        time.sleep(SAMPLE_S)
    return peak


def store_bytes(catalog: Catalog) -> tuple[int, str]:
    """Bytes the study's `ray.put` of the streamed dataset (its catalog) takes in Ray's object store."""
    import ray

    ref = ray.put(catalog.to_arrays())
    try:
        return ray.experimental.get_object_locations([ref])[ref]["object_size"], "ray.put object_size"
    except Exception:  # noqa: BLE001 - an API Ray may move: the pickled size instead, said so
        return len(pickle.dumps(catalog.to_arrays())), "pickled size"
    finally:
        del ref


def memory_lines(catalog: Catalog, train: ImageList, batch: int, workers: int, rounds: int) -> list[str]:
    """Peak RSS of a streaming trial at N and 2N images, their ratio, and the catalog's object-store bytes."""
    local_ray(workers)
    sizes = {"N": replace(catalog, train=balanced_subset(train, len(train) // 2)), "2N": replace(catalog, train=train)}
    measured: dict[str, list[tuple[float, float]]] = {name: [] for name in sizes}
    for round_ in range(rounds):  # no warm-up: every run is a fresh process
        for name in list(sizes)[:: -1 if round_ % 2 else 1]:
            measured[name].append(peak_rss(sizes[name], batch, workers, workers + 1))
    ratios = [big[0] / small[0] for small, big in zip(measured["N"], measured["2N"])]
    met = spread(ratios)[2] <= RSS_TARGET
    tree = {name: statistics.median(m[0] for m in v) for name, v in measured.items()}
    own = {name: statistics.median(m[1] for m in v) for name, v in measured.items()}
    store = {name: store_bytes(c) for name, c in sizes.items()}
    n, n2 = len(sizes["N"].train), len(train)
    return [f"  memory: peak RSS of a streaming trial (1 epoch, resnet8 width {MODEL_WIDTH}, SGD, {workers} decode "
            f"process(es); process + decoders, median of rounds): N={n} {tree['N']:.0f} MiB, "
            f"2N={n2} {tree['2N']:.0f} MiB; "
            f"ratio 2N/N {ratio_text(ratios)} (target <= {RSS_TARGET}: {'met' if met else 'NOT met'} by the whole "
            f"IQR); growth {tree['2N'] - tree['N']:+.0f} MiB (a decoded copy's: "
            f"{(sizes['2N'].decoded_bytes() - sizes['N'].decoded_bytes()) / MIB:+.0f} MiB); the training process "
            f"alone (ru_maxrss) {own['N']:.0f} / {own['2N']:.0f} MiB",
            f"  memory: object store for the streamed dataset (its catalog, {store['N'][1]}): "
            f"N {store['N'][0] / 1024:.1f} KiB, 2N {store['2N'][0] / 1024:.1f} KiB (decoded in memory instead: "
            f"{sizes['N'].decoded_bytes() / MIB:.1f} / {sizes['2N'].decoded_bytes() / MIB:.1f} MiB)"]


# --- epochs: a real training epoch from memory vs streamed ------------------------------------------

def small_model(catalog: Catalog) -> nn.Module:
    """The ResNet-8 both memory and epoch lines train, in channels_last as a trial places it."""
    return build_model("resnet8", catalog.num_classes, catalog.image_size, width=MODEL_WIDTH).to(
        memory_format=torch.channels_last)


def train_epoch(feed: MemoryFeed | StreamedFeed, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                mean: tuple, std: tuple) -> float:
    """Seconds of one training epoch (normalise, forward, backward, step) over `feed`'s batches."""
    mean_t, std_t = torch.tensor(mean), torch.tensor(std)
    model.train()
    start = time.perf_counter()
    for _, images, labels in feed.epoch(epoch):
        x = normalize(images, mean_t, std_t).contiguous(memory_format=torch.channels_last)
        loss = nn.functional.cross_entropy(model(x), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def decoded(catalog: Catalog, images: ImageList, workers: int) -> ImageData:
    """`images` decoded once, as the object-store path holds them (uint8 [N, 3, S, S])."""
    loader = torch.utils.data.DataLoader(StreamDataset(catalog, images, train=False), batch_size=256,
                                         num_workers=workers, collate_fn=collate)
    parts = [batch for batch in loader]
    if not all(isinstance(p, tuple) for p in parts):
        raise DataError(f"cannot decode {next(p for p in parts if not isinstance(p, tuple)).source}")
    return ImageData(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), images.classes)


def epoch_lines(catalog: Catalog, train: ImageList, batch: int, workers: int, rounds: int) -> list[str]:
    """Seconds per training epoch from memory and streamed, interleaved, and the ratio streamed ÷ memory."""
    if catalog.augment == "imagenet":
        return [f"  epochs: skipped ({catalog.dataset} always streams: its RandomResizedCrop reads the source images)"]
    torch.set_num_threads(workers + 1)
    shard, seed = Shard(len(train), batch, 0, 1, 0), 0
    memory = decoded(catalog, train, workers)
    cpu = torch.device("cpu")
    feeds = {"memory": MemoryFeed(Dataset(memory, memory, catalog.mean, catalog.std), shard, seed, cpu),
             "streaming": StreamedFeed(StreamFeed(catalog, train, {}, shard, workers, cpu), seed)}

    def arm(feed: MemoryFeed | StreamedFeed) -> Callable[[int], float]:
        torch.manual_seed(seed)
        model = small_model(catalog)
        optimizer = build_optimizer("lars", list(model.named_parameters()), lr=0.1, momentum=0.9, weight_decay=5e-4)
        return lambda epoch: train_epoch(feed, epoch, model, optimizer, catalog.mean, catalog.std)

    measured = interleaved({name: arm(feed) for name, feed in feeds.items()}, rounds)
    ratios = [s / m for s, m in zip(measured["streaming"], measured["memory"])]
    low = spread(ratios)[1]
    verdict = "memory faster by the whole IQR: memory-when-it-fits holds" if low > 1 else \
        "memory not faster by the whole IQR"
    return [f"  epochs: resnet8 width {MODEL_WIDTH}, lars, batch {batch}, {len(train)} images at "
            f"{catalog.image_size} px, {workers + 1} torch threads, {workers} decode process(es): memory (MemoryFeed) "
            f"{statistics.median(measured['memory']):.2f} s, streaming (StreamedFeed) "
            f"{statistics.median(measured['streaming']):.2f} s (medians); ratio streaming/memory {ratio_text(ratios)} "
            f"({verdict})"]


# --- entry point ------------------------------------------------------------------------------------

def local_ray(workers: int) -> None:
    """A local Ray of `workers` + 1 CPUs for this benchmark (started once), its workers at nice 0."""
    import ray

    from trainables.local_ray import WORKER_NICENESS_ENV, with_quoted_interpreter

    if not ray.is_initialized():
        os.environ.setdefault(WORKER_NICENESS_ENV, "0")  # as the study's local Ray (trainables.local_ray)
        ray.init(address="local", num_cpus=workers + 1, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING, runtime_env=with_quoted_interpreter(None))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m trainables.bench --data", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, metavar="DIR", help="an image folder: train/<class>/*, val/<class>/*")
    parser.add_argument("--dataset", choices=("imagefolder", "imagenet"), default="imagefolder")
    parser.add_argument("--image-size", type=int, help="decoded square side (default: the dataset's, 64 / 224)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each comparison, alternating the order")
    parser.add_argument("--workers", type=int, default=max((os.cpu_count() or 2) - 1, 1),
                        help="decode processes (DataLoader workers; Ray Data gets K + 1 CPUs)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--limit", type=int, help="use this many training images (class-balanced)")
    parser.add_argument("--no-throughput", action="store_true", help="skip the loaders' images/s")
    parser.add_argument("--no-memory", action="store_true", help="skip the RSS and object-store lines")
    parser.add_argument("--no-epochs", action="store_true", help="skip the memory vs streaming epochs")
    return parser.parse_args(argv)


def checked(args: argparse.Namespace) -> tuple[Catalog, ImageList]:
    """The folder's catalog and the training images benchmarked; DataError naming the problem."""
    for name in ("rounds", "workers", "batch_size", "image_size", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise DataError(f"--{name.replace('_', '-')}: must be >= 1, got {value}")
    if not is_uri(args.data) and not Path(args.data).is_dir():
        raise DataError(f"--data {args.data}: directory not found")
    root = args.data if is_uri(args.data) else str(Path(args.data).resolve())
    catalog = build_catalog(args.dataset, root, args.image_size)
    train = balanced_subset(catalog.train, args.limit)
    if len(train) < 2 * args.batch_size:  # the memory lines stream half of them in whole batches
        raise DataError(f"--data {args.data}: {len(train)} training images; the benchmark needs at least "
                        f"2 x --batch-size ({2 * args.batch_size})")
    return catalog, train


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        catalog, train = checked(args)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"data: {catalog.dataset} at {catalog.root}: {len(train)} training images, {catalog.num_classes} classes, "
          f"decoded to {catalog.image_size} px; {args.workers} decode process(es), batch {args.batch_size}, "
          f"{args.rounds} rounds", flush=True)
    sections = [(args.no_throughput, throughput_lines), (args.no_memory, memory_lines), (args.no_epochs, epoch_lines)]
    try:
        for skipped, lines in sections:
            if not skipped:
                print("\n".join(lines(catalog, train, args.batch_size, args.workers, args.rounds)), flush=True)
    finally:
        if "ray" in sys.modules:
            sys.modules["ray"].shutdown()


if __name__ == "__main__":
    main()
