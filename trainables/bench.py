"""Trainable overhead: images/s of the Ray Train classification trial vs a bare PyTorch loop; and a
study's overhead: wall time of a 6-trial, 1-epoch `demo` study ÷ the sum of its trials' epoch seconds.

    python -m trainables.bench [--model resnet8] [--optimizer lars] [--batch-size 512] [--limit 10240]
                               [--epochs 4] [--rounds 5] [--device cpu|cuda] [--data-dir DIR] [--no-study]

Both sides train the same model on the same data with the same optimizer, schedule, batch and
tensor augmentation; the bare loop has no Ray, no telemetry, no metrics, no checkpoints. Training
images/s is the median over epochs after the first (which includes one-off warm-up); the two sides
run in rounds (alternating which goes first), each round gives a ratio bare ÷ trainable; the median
and interquartile range over rounds are printed, and the target (≤ 1.10) is met only if the whole IQR
meets it. With `--device cuda`
the defaults become ResNet-18, the full CIFAR-10 and batch 4096, and seconds/epoch are printed too.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from optim import build_optimizer, build_scheduler, optimizer_hparams
from trainables.augment import crop_flip, normalize, sample_crop_flip
from trainables.batches import Shard, generator
from trainables.data import balanced_subset, data_dir_for, load_dataset
from trainables.download import ensure_dataset
from trainables.launch import default_threads, fit
from trainables.models import build_model


def bare_loop(cfg: dict, device: torch.device, threads: int) -> list[float]:
    """Seconds per epoch of a plain single-process training loop."""
    torch.set_num_threads(threads)
    data = load_dataset(cfg["dataset"], cfg["data_dir"])
    train = balanced_subset(data.train, cfg["limit"])
    images, labels = train.images.to(device), train.labels.to(device)
    mean, std = torch.tensor(data.mean, device=device), torch.tensor(data.std, device=device)
    torch.manual_seed(cfg["seed"])
    model = build_model(cfg["model"], data.num_classes, data.image_size).to(device, memory_format=torch.channels_last)
    shard = Shard(len(train), cfg["batch_size"], 0, 1, cfg["seed"])
    hparams = {k: v for k, v in cfg.items() if k in optimizer_hparams(cfg["optimizer"])}
    opt = build_optimizer(cfg["optimizer"], model.parameters(), **hparams)
    sched = build_scheduler("warmup_cosine", opt, epochs=cfg["epochs"], steps_per_epoch=shard.steps,
                            warmup_epochs=cfg["warmup_epochs"])
    autocast = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    seconds = []
    for epoch in range(cfg["epochs"]):
        start = time.perf_counter()
        for step, index in shard.epoch(epoch):
            draws = sample_crop_flip(cfg["batch_size"], generator(cfg["seed"], epoch, step, 1))
            x = normalize(crop_flip(images[index], draws), mean, std).contiguous(memory_format=torch.channels_last)
            with autocast:
                loss = nn.functional.cross_entropy(model(x).float(), labels[index])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--model")
    parser.add_argument("--optimizer", default="lars")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2.0)
    parser.add_argument("--data-dir", help="CIFAR-10's folder (default: as `python -m study.run` finds it)")
    parser.add_argument("--rounds", type=int, default=5, help="trial/bare rounds, alternating which runs first")
    parser.add_argument("--no-study", action="store_true", help="skip the study-overhead line")
    args = parser.parse_args(argv)
    args.data_dir = str(ensure_dataset("cifar10", data_dir_for("cifar10", args.data_dir)))
    gpu = args.device == "cuda"
    cfg = dict(dataset="cifar10", data_dir=args.data_dir, model=args.model or ("resnet18" if gpu else "resnet8"),
               limit=args.limit if args.limit else (None if gpu else 10240), optimizer=args.optimizer, lr=args.lr,
               batch_size=args.batch_size or (4096 if gpu else 512), epochs=args.epochs, warmup_epochs=1,
               seed=0, weight_decay=5e-4, test_limit=2000)
    if "momentum" in optimizer_hparams(args.optimizer):
        cfg["momentum"] = 0.9
    threads = default_threads(1, gpu)
    images = len(balanced_subset(load_dataset("cifar10", args.data_dir).train, cfg["limit"]))
    steps = images // cfg["batch_size"]

    def trial() -> tuple[float, float]:
        """The trainable's training images/s and seconds/epoch (medians over epochs after the first)."""
        outcome = fit(cfg, use_gpu=gpu)
        if outcome.status != "completed":
            raise SystemExit(f"trial ended {outcome.status}: {outcome.error}")
        later = outcome.history[1:]
        return (statistics.median(h["images_per_second"] for h in later),
                statistics.median(h["epoch_seconds"] for h in later))

    def bare() -> float:
        seconds = bare_loop(cfg, torch.device(args.device), threads)
        return statistics.median(steps * cfg["batch_size"] / s for s in seconds[1:])

    trials, bare_ips = [], []
    for round_ in range(args.rounds):  # alternate which side runs first, so load drift falls on both
        if round_ % 2:
            bare_ips.append(bare())
        trials.append(trial())
        if not round_ % 2:
            bare_ips.append(bare())
    trial_ips, trial_epochs = zip(*trials)
    ratios = [b / t for b, t in zip(bare_ips, trial_ips)]

    low, _, high = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
    print(f"{cfg['model']} {cfg['optimizer']} batch {cfg['batch_size']} on {args.device} ({threads} threads), "
          f"{images} images, {args.epochs} epochs; medians over epochs 2..{args.epochs}, {args.rounds} rounds")
    print(f"  bare PyTorch loop      {statistics.median(bare_ips):9.0f} images/s   (median of rounds)")
    print(f"  Ray Train trainable    {statistics.median(trial_ips):9.0f} images/s   (median of rounds)")
    print(f"  ratio bare/trainable   {statistics.median(ratios):9.3f}   IQR over rounds [{low:.3f}, {high:.3f}] "
          f"(target <= 1.10: {'met' if high <= 1.10 else 'not met by the whole IQR'}); rounds: "
          + " ".join(f"{r:.3f}" for r in ratios))
    if gpu:
        print(f"  trainable seconds/epoch {statistics.median(trial_epochs):.2f}   "
              "(target <= 3 s for ResNet-18 bs 4096 on an H100)")
    if not args.no_study:
        print(study_overhead(args.data_dir))


STUDY_TRIALS = 6


def study_overhead(data_dir: str) -> str:
    """Run `python -m study.run --space demo` (6 trials × 1 epoch) and compare its wall time with its trials' epochs."""
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as storage:
        cmd = [sys.executable, "-m", "study.run", "--space", "demo", "--num-samples", str(STUDY_TRIALS),
               "--epochs", "1", "--data-dir", data_dir, "--storage", storage]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        process_wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"the study failed ({done.returncode}): {done.stderr[-2000:]}")
        client = MlflowClient(f"sqlite:///{Path(storage) / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
        epochs = sum(r.data.metrics.get("epoch_seconds", 0.0) for r in runs)  # 1 epoch each
        (parent,) = [r for r in runs if "trial_id" not in r.data.tags]
        loop_wall = parent.data.metrics["wall_seconds"]
        concurrency = parent.data.params.get("resources.max_concurrent", "?")
    return (f"  study: demo, {STUDY_TRIALS} trials x 1 epoch, {concurrency} at a time: Tune wall {loop_wall:.0f} s "
            f"(process {process_wall:.0f} s incl. Ray start and report) / sum of trial epoch seconds {epochs:.0f} s "
            f"= {loop_wall / epochs:.2f} (process: {process_wall / epochs:.2f})")


if __name__ == "__main__":
    main()
