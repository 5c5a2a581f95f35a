"""Whole-training benchmarks: a study's trial vs a bare PyTorch loop; micro-batching and telemetry as
shares of a step; on CUDA, ResNet-18 epochs at the paper's batches with a phase breakdown; and the
platform's cost per trial and per study: a `demo` study of 24 one-step trials, its trials/min, slot-seconds
per trial beyond training, each trial's phases (median and IQR over its trials), its slot-seconds split (trial
runs, gaps between them, each slot's start and end), the study driver's CPU per trial and the study's fixed costs.

    python -m trainables.bench [--device cpu|cuda] [--rounds 5] [--steps 5] [--model resnet8]
                               [--optimizer lars] [--batch-size 512] [--limit 10240] [--epochs 4]
                               [--data-dir DIR] [--no-trials] [--no-torch-trainer] [--no-steps] [--no-study]
    python -m trainables.bench --data DIR …  # the data paths on an image folder: trainables/data_bench.py

A trial runs the classification loop one of two ways, both measured: a one-worker trial inside its
Tune actor (what a study runs for `workers=1`; target ≤ 1.05× a bare loop's training time), and a Ray
Train `TorchTrainer` run (what a study runs for `workers>1`; here with one worker, to compare like with
like; target ≤ 1.10×), each with its wall time split into training, the loop's setup and the rest.
All sides train the same model on the same data with the same optimizer, schedule, batch and tensor
augmentation; the bare loop has no Ray (none is up while it runs), no telemetry, no metrics, no checkpoints, and runs in a fresh
process twice: with malloc's defaults (what a user's script gets) and with the settings every trial has
(`optim.allocator` and `MALLOC_ARENA_MAX`: the platform's own cost, like for like). Training images/s is the median over epochs
after the first (which includes one-off warm-up); the sides run in rounds, in reverse order every other
round; each round gives a ratio per path and bare loop; the median and interquartile range over rounds
are printed, and a target is met only if the whole IQR
meets it. Step lines time the study's own `train_step`, the compared variants alternating step by step. With
`--device cuda` the defaults become ResNet-18, the full CIFAR-10 and batch 4096, and the epoch lines
(4096, and 16384 with `micro_batch_size=auto`) print seconds per phase and peak memory.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from optim import build_optimizer, build_scheduler, optimizer_hparams
from optim.allocator import keep_freed_memory
from optim.checks import count_arg
from optim.bench import CONFIGS, WD, spread
from optim.factory import LAYERWISE
from trainables.augment import crop_flip, epoch_draws, normalize, sample_crop_flip
from trainables.batches import MICRO_AUTO, Shard, generator
from trainables.data import DataError, balanced_subset, data_dir_for, load_dataset
from trainables.download import ensure_dataset
from trainables.environment import MALLOC_ARENA_ENV, set_library_defaults, worker_env
from trainables.batches import resolve_batching
from trainables.classification import AUGMENT_STREAM, fitting_micro_batch, input_pipeline, train_step
from trainables.config import TrialConfig
from trainables.launch import LOOPS, default_threads, fit
from trainables.models import build_model
from trainables.records import DRIVER_CPU_METRIC, STATE_FILE, STATUS_KEY, STUDY_WALL_METRIC, TRIAL_ID_TAG, TrialStatus
from trainables.epochs import evaluate
from trainables.worker import WorkerEnv, build_training, place_model


def bare_loop(cfg: dict, device: torch.device, threads: int) -> list[float]:
    """Seconds per epoch of a plain single-process training loop (malloc as the process has it)."""
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


def bare_loop_process(cfg: dict, device: str, threads: int, keep_freed: bool) -> list[float]:
    """`bare_loop` in a fresh process: with malloc's defaults, as a user's script has them, or with the
    settings every trial has (`optim.allocator.keep_freed_memory`, and `trainables.environment.WORKER_ENV`, read
    at the process's start)."""
    saved, like_a_trial = dict(os.environ), worker_env()  # what a trial's worker starts with
    os.environ.pop(MALLOC_ARENA_ENV, None)
    if keep_freed:
        os.environ.update(like_a_trial)
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(_bare_loop_child, cfg, device, threads, keep_freed).result()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _bare_loop_child(cfg: dict, device: str, threads: int, keep_freed: bool) -> list[float]:
    if keep_freed:
        keep_freed_memory()
    return bare_loop(cfg, torch.device(device), threads)


MICRO_SPLIT = 4  # the micro-batching line splits the batch into this many micro-batches
TELEMETRY_OFF = 10**9  # telemetry_every so large that no step records
STEP_HPARAMS = {name: CONFIGS[name][1] for name in LAYERWISE}  # optim.bench's settings per optimizer


class _NoSession:
    """The step needs no Ray: nothing is reported or checkpointed."""

    rank, world_size = 0, 1


NO_SESSION = _NoSession()


class StepRunner:
    """One variant's model and optimizer, timing the study's own `train_step` one step at a time."""

    def __init__(self, settings: dict, x: torch.Tensor, y: torch.Tensor, steps: int):
        self.cfg = TrialConfig.from_dict(settings, check_data=False)
        self.micro, bn_group = resolve_batching(self.cfg.batch_size, 1, self.cfg.micro_batch_size, self.cfg.bn_group,
                                                x.is_cuda)
        self.env = WorkerEnv(0, 1, x.device, torch.bfloat16 if x.is_cuda else None, NO_SESSION)
        torch.manual_seed(self.cfg.seed)
        self.model = place_model(build_model(self.cfg.model, 10, x.shape[-1], width=self.cfg.width), self.env, bn_group)
        self.optimizer, _, _ = build_training(self.cfg, self.model, steps_per_epoch=steps + 1, epochs=self.cfg.epochs)
        self.clock = PhaseClock(x.device)
        self.optimizer.register_step_pre_hook(lambda *_: self.clock.switch("optimizer"))
        self.optimizer.register_step_post_hook(lambda *_: self.clock.switch("rest"))
        self.x, self.y, self.loss_fn = x, y, nn.CrossEntropyLoss()

    def step(self) -> tuple[float, float]:
        """(seconds of one whole training step, seconds of its optimizer step)."""
        self.clock.seconds = {}
        self.clock.switch("rest")
        train_step(self.cfg, self.env, self.model, self.model, self.optimizer, self.loss_fn, self.x, self.y, self.micro)
        self.clock.switch(None)
        return sum(self.clock.seconds.values()), self.clock.seconds["optimizer"]


def paired_steps(variants: dict[str, dict], x: torch.Tensor, y: torch.Tensor, rounds: int, steps: int
                 ) -> dict[str, list[tuple[float, float]]]:
    """(seconds/step, optimizer seconds/step) of each variant's steps, the variants alternating step by step
    (the order reversed every other step) on models built once per round, after a warm-up step each: every
    step of one variant has a neighbour of the other taken under the same machine load."""
    seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(rounds):
        runners = {name: StepRunner(settings, x, y, steps) for name, settings in variants.items()}
        for runner in runners.values():
            runner.step()
        for i in range(steps):
            for name in list(runners)[:: -1 if i % 2 else 1]:
                seconds[name].append(runners[name].step())
    return seconds


def step_costs(cfg: dict, device: torch.device, rounds: int, steps: int) -> list[str]:
    """Steps/s with and without micro-batching (same global batch and BatchNorm groups), and each layer-wise
    optimizer's trust-ratio telemetry on vs off, as a share of a whole training step; every ratio is over
    adjacent steps of the two variants (`paired_steps`)."""
    data = load_dataset("cifar10", cfg["data_dir"])
    train = balanced_subset(data.train, cfg["batch_size"])
    x = normalize(train.images.to(device).float() / 255, torch.tensor(data.mean, device=device),
                  torch.tensor(data.std, device=device)).contiguous(memory_format=torch.channels_last)
    y = train.labels.to(device)
    base = dict(model=cfg["model"], batch_size=cfg["batch_size"], epochs=cfg["epochs"], warmup_epochs=0,
                seed=cfg["seed"], threads=cfg["threads"])
    group = cfg["batch_size"] // MICRO_SPLIT
    whole = dict(base, optimizer="lars", lr=cfg["lr"], momentum=0.9, weight_decay=WD, bn_group=group)
    seconds = paired_steps({"whole": whole, "micro": dict(whole, micro_batch_size=group)}, x, y, rounds, steps)
    ratio = spread([m[0] / w[0] for m, w in zip(seconds["micro"], seconds["whole"])])
    whole_step, micro_step = (statistics.median(s for s, _ in seconds[k]) for k in ("whole", "micro"))
    lines = [f"  train step, lars, batch {cfg['batch_size']}, bn_group {group}: whole batch {1 / whole_step:.2f} "
             f"steps/s, {MICRO_SPLIT} micro-batches of {group} {1 / micro_step:.2f} steps/s; time ratio "
             f"micro/whole {ratio[0]:.3f} IQR [{ratio[1]:.3f}, {ratio[2]:.3f}] over {len(seconds['whole'])} step pairs"]
    for name in LAYERWISE:
        settings = dict(base, optimizer=name, **STEP_HPARAMS[name])
        seconds = paired_steps({"on": dict(settings, telemetry_every=1),
                                "off": dict(settings, telemetry_every=TELEMETRY_OFF)}, x, y, rounds, steps)
        pairs = list(zip(seconds["on"], seconds["off"]))
        whole_ratio = spread([on[0] / off[0] for on, off in pairs])
        # the same cost read from the optimizer step alone (its on/off difference over the whole step):
        # far less noisy than the whole step's ratio, whose steps differ by more than telemetry costs
        share = spread([1 + (on[1] - off[1]) / off[0] for on, off in pairs])
        met = whole_ratio[2] <= 1.03 and share[2] <= 1.03
        lines.append(f"  telemetry {name:7s} on/off: whole step {whole_ratio[0]:.3f} IQR [{whole_ratio[1]:.3f}, "
                     f"{whole_ratio[2]:.3f}]; 1 + optimizer-time difference / step {share[0]:.4f} IQR [{share[1]:.4f}, "
                     f"{share[2]:.4f}] of a {statistics.median(s for s, _ in seconds['off']) * 1000:.0f} ms step "
                     f"(optimizer {statistics.median(o for _, o in seconds['off']) * 1000:.1f} ms off, "
                     f"{statistics.median(o for _, o in seconds['on']) * 1000:.1f} ms on), {len(pairs)} step pairs; "
                     f"target <= 1.03: {'met by both IQRs' if met else 'not met by the whole IQR of both measures'}")
    return lines


def trial_lines(cfg: dict, device: str, rounds: int, torch_trainer_too: bool = True) -> list[str]:
    """Training images/s of both bare loops and both trial paths, in interleaved rounds, with ratios and each
    path's seconds outside training."""
    gpu = device == "cuda"
    images = len(balanced_subset(load_dataset("cifar10", cfg["data_dir"]).train, cfg["limit"]))
    steps = images // cfg["batch_size"]

    def timed(run: Callable[[], list[dict]]) -> Callable[[], PathRun]:
        def measure() -> PathRun:
            start = time.perf_counter()
            history = run()
            return PathRun.of(history, time.perf_counter() - start)
        return measure

    def torch_trainer() -> list[dict]:
        outcome = fit(cfg, use_gpu=gpu)
        if outcome.status != TrialStatus.COMPLETED:
            raise SystemExit(f"TorchTrainer run ended {outcome.status}: {outcome.error}")
        return outcome.history

    def bare(keep_freed: bool) -> Callable[[], float]:
        def images_per_second() -> float:
            seconds = bare_loop_process(cfg, device, cfg["threads"], keep_freed)
            return statistics.median(steps * cfg["batch_size"] / s for s in seconds[1:])
        return images_per_second

    # both bare loops run in fresh processes: malloc's defaults (a user's script), and the trials' setting
    bare_loops = {BARE_PLAIN: bare(False), BARE_LIKE: bare(True)}
    paths = {TARGET_PATH: timed(lambda: tune_trial(cfg, gpu))}
    if torch_trainer_too:
        paths[TORCH_TRAINER_PATH] = timed(torch_trainer)
    measured: dict[str, list] = {name: [] for name in [*bare_loops, *paths]}
    runners = {name: beside_its_ray(RAY_BESIDE[name], run) for name, run in {**bare_loops, **paths}.items()}
    for round_ in range(rounds):  # every side alternately earlier and later, so load drift falls on all
        order = [*bare_loops, *paths]
        for name in order if round_ % 2 == 0 else order[::-1]:
            measured[name].append(runners[name]())

    lines = [f"{cfg['model']} {cfg['optimizer']} batch {cfg['batch_size']} on {device} ({cfg['threads']} threads), "
             f"{images} images, {cfg['epochs']} epochs; medians over epochs 2..{cfg['epochs']}, {rounds} rounds"]
    lines += [f"  {name:38s} {statistics.median(measured[name]):7.0f} images/s" for name in bare_loops]
    for name in paths:
        runs: list[PathRun] = measured[name]
        lines.append(f"  {name:38s} {statistics.median(r.images_per_second for r in runs):7.0f} images/s; per run "
                     f"{statistics.median(r.wall for r in runs):.1f} s wall = {statistics.median(r.training for r in runs):.1f}"
                     f" s training + {statistics.median(r.setup for r in runs):.1f} s the loop's setup + "
                     f"{statistics.median(r.outside for r in runs):.1f} s the rest ("
                     f"{'controller and worker group' if name == TORCH_TRAINER_PATH else 'the Tune actor'}"
                     ", evaluation, checkpoints, reports, teardown; Ray's own start not counted)")
        for bare_name in bare_loops:
            ratios = [b / r.images_per_second for b, r in zip(measured[bare_name], runs)]
            median, low, high = spread(ratios)
            limit = TRIAL_TARGETS[name]
            verdict = "met" if high <= limit else "not met by the whole IQR"
            lines.append(f"    training time trial / {bare_name}: {median:.3f}, IQR [{low:.3f}, {high:.3f}] (target "
                         f"<= {limit:.2f}: {verdict}); rounds: " + " ".join(f"{r:.3f}" for r in ratios))
    if gpu:
        lines.append(f"  {TARGET_PATH} seconds/epoch {statistics.median(r.epoch for r in measured[TARGET_PATH]):.2f}   "
                     "(target <= 3 s for ResNet-18 bs 4096 on an H100)")
    return lines


@dataclass
class PathRun:
    """One trial path's run: training images/s and seconds/epoch (medians after the first epoch), and its wall
    seconds split into training (all epochs), the loop's own setup, and the rest."""

    images_per_second: float
    epoch: float
    wall: float
    training: float
    setup: float

    @property
    def outside(self) -> float:
        return self.wall - self.training - self.setup

    @classmethod
    def of(cls, history: list[dict], wall: float) -> "PathRun":
        rest = history[1:]
        return cls(statistics.median(h["images_per_second"] for h in rest),
                   statistics.median(h["epoch_seconds"] for h in rest), wall,
                   sum(h["epoch_seconds"] for h in history), sum(v for h in history if math.isfinite(v := float(h.get("setup_seconds", math.nan)))))


GPU_BATCHES = ((4096, None), (16384, "auto"))  # (global batch, micro_batch_size) of the --device cuda epochs
GPU_BN_GROUP = 512  # BatchNorm group of those epochs: the same at both batches, so micro-batching may split


class PhaseClock:
    """Wall seconds per phase; the device is synchronised at every boundary so each phase owns its work."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, {}
        self._phase, self._since = None, 0.0

    def switch(self, phase: str | None) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        if self._phase is not None:
            self.seconds[self._phase] = self.seconds.get(self._phase, 0.0) + now - self._since
        self._phase, self._since = phase, now


def epoch_phases(cfg: dict, device: torch.device, batch: int, micro: int | str | None, bn_group: int,
                 epochs: int = 2) -> dict[str, float]:
    """One training epoch's phases (data, forward/backward, optimizer), its evaluation and checkpoint, in
    seconds (the last of `epochs`, after warm-up), with the peak device memory in GiB and the micro-batch used."""
    settings = TrialConfig.from_dict(dict(model=cfg["model"], optimizer="lars", lr=cfg["lr"], momentum=0.9,
                                          weight_decay=WD, batch_size=batch, micro_batch_size=micro,
                                          bn_group=bn_group, epochs=epochs, warmup_epochs=0), check_data=False)
    micro, bn_group = resolve_batching(batch, 1, settings.micro_batch_size, settings.bn_group, device.type == "cuda")
    env = WorkerEnv(0, 1, device, torch.bfloat16 if device.type == "cuda" else None, NO_SESSION)
    data = load_dataset("cifar10", cfg["data_dir"])
    train = balanced_subset(data.train, cfg["limit"])
    images, labels = train.images.to(device), train.labels.to(device)
    test_images, test_labels = data.test.images.to(device), data.test.labels.to(device)
    model = place_model(build_model(settings.model, 10, data.image_size), env, bn_group)
    shard = Shard(len(labels), batch, 0, 1, 0)
    optimizer, scheduler, _ = build_training(settings, model, shard.steps, epochs)
    prepare, loss_fn, clock = input_pipeline(data.mean, data.std, env), nn.CrossEntropyLoss(), PhaseClock(device)
    optimizer.register_step_pre_hook(lambda *_: clock.switch("optimizer"))
    optimizer.register_step_post_hook(lambda *_: clock.switch("forward/backward"))
    for epoch in range(epochs):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        clock.seconds = {}
        clock.switch("data")
        draws = epoch_draws(lambda step: sample_crop_flip(batch, generator(0, epoch, step, AUGMENT_STREAM)),
                            shard.steps, shard.rows, device)
        for step, index in shard.epoch(epoch, device):
            clock.switch("data")
            x, y = prepare(crop_flip(images[index], draws[step])), labels[index]
            clock.switch("forward/backward")
            if micro == MICRO_AUTO:
                micro = fitting_micro_batch(settings, env, model, model, loss_fn, x, y, bn_group)
            train_step(settings, env, model, model, optimizer, loss_fn, x, y, micro)
            scheduler.step()
        clock.switch("eval")
        evaluate(model, test_images, test_labels, env, prepare)
        clock.switch("checkpoint")
        with tempfile.TemporaryDirectory() as directory:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, Path(directory) / STATE_FILE)
        clock.switch(None)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {**clock.seconds, "peak_gib": peak, "micro_batch_size": micro}


def gpu_epoch_lines(cfg: dict, device: torch.device) -> list[str]:
    """Epoch seconds, phases and peak memory of ResNet-18 (bf16) at the paper's 4K and 16K batches."""
    lines = []
    for batch, micro in GPU_BATCHES:
        phases = epoch_phases(cfg, device, batch, micro, GPU_BN_GROUP)
        train = sum(phases[k] for k in ("data", "forward/backward", "optimizer"))
        lines.append(f"  {cfg['model']} batch {batch} (micro_batch_size {micro or 'whole'} -> {phases['micro_batch_size']}, "
                     f"bn_group {GPU_BN_GROUP}): epoch {train:.2f} s [data {phases['data']:.2f}, forward/backward "
                     f"{phases['forward/backward']:.2f}, optimizer {phases['optimizer']:.2f}] + eval {phases['eval']:.2f}"
                     f" s + checkpoint {phases['checkpoint']:.2f} s; peak memory {phases['peak_gib']:.1f} GiB"
                     + (" (target <= 3 s per epoch on one H100)" if batch == 4096 else ""))
    return lines


def main(argv: list[str] | None = None) -> None:
    set_library_defaults()
    argv = sys.argv[1:] if argv is None else argv
    if any(arg == "--data" or arg.startswith("--data=") for arg in argv):  # a benchmark of its own, its own options
        from trainables.data_bench import main as data_bench

        return data_bench(argv)
    parser = argparse.ArgumentParser(prog="python -m trainables.bench", description=__doc__.partition("\n\n")[0])
    parser.add_argument("--data", metavar="DIR", help="instead: benchmark the data paths on this image folder "
                                                      "(options: python -m trainables.bench --data DIR --help)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--model", help="default resnet8 (cpu), resnet18 (cuda)")
    parser.add_argument("--optimizer", default="lars", help="default lars")
    parser.add_argument("--batch-size", type=count_arg, help="default 512 (cpu), 4096 (cuda)")
    parser.add_argument("--limit", type=count_arg, help="training images (default 10240 on cpu, all on cuda)")
    parser.add_argument("--epochs", type=count_arg, default=4, help="default 4")
    parser.add_argument("--lr", type=float, default=2.0, help="default 2.0")
    parser.add_argument("--data-dir", help="CIFAR-10's folder (default: as `python -m study.run` finds it)")
    parser.add_argument("--rounds", type=count_arg, default=5, help="rounds of bare loop and trials, alternating the order")
    parser.add_argument("--no-study", action="store_true", help="skip the short-trial study's cost lines")
    parser.add_argument("--no-trials", action="store_true", help="skip the trial vs bare loop lines")
    parser.add_argument("--no-torch-trainer", action="store_true", help="of the trials, time the Tune one only")
    parser.add_argument("--no-steps", action="store_true", help="skip the micro-batching and telemetry lines")
    parser.add_argument("--steps", type=count_arg, default=5, help="timed steps per variant and round in those lines")
    args = parser.parse_args(argv)
    try:
        args.data_dir = str(ensure_dataset("cifar10", data_dir_for("cifar10", args.data_dir)))
    except DataError as err:
        parser.error(str(err))
    gpu = args.device == "cuda"
    cfg = dict(dataset="cifar10", data_dir=args.data_dir, model=args.model or ("resnet18" if gpu else "resnet8"),
               limit=args.limit if args.limit else (None if gpu else 10240), optimizer=args.optimizer, lr=args.lr,
               batch_size=args.batch_size or (4096 if gpu else 512), epochs=args.epochs, warmup_epochs=1,
               seed=0, weight_decay=5e-4, test_limit=2000,
               val_size=0)  # the trials train on the same images as the bare loop (no validation split)
    if "momentum" in optimizer_hparams(args.optimizer):
        cfg["momentum"] = 0.9
    cfg["threads"] = default_threads(1, gpu)  # a Tune actor's torch would otherwise take Ray's OMP_NUM_THREADS=1
    if gpu:
        print("\n".join(gpu_epoch_lines(cfg, torch.device("cuda"))))
    if not args.no_trials:
        print("\n".join(trial_lines(cfg, args.device, args.rounds, not args.no_torch_trainer)))
    if not args.no_steps:
        print("\n".join(step_costs(cfg, torch.device(args.device), args.rounds, args.steps)))
    if not args.no_study:
        print("\n".join(study_costs(args.data_dir)))


TARGET_PATH = "one-worker Tune trial"  # the path a study's one-worker trials take
TORCH_TRAINER_PATH = "Ray Train TorchTrainer"  # the path of multi-worker trials (here with one worker)
TRIAL_TARGETS = {TARGET_PATH: 1.05, TORCH_TRAINER_PATH: 1.10}  # largest bare ÷ trial time ratio per path
BARE_PLAIN = "bare loop, malloc defaults"
BARE_LIKE = "bare loop, the trials' malloc settings"
# The local Ray each side runs beside, as in use: none beside a bare loop (a user's script), one without its dashboard
# beside a one-worker Tune trial and one with it beside a TorchTrainer run (`study.run.start_local_ray`). Ray's
# daemons take ~2.5% of a core while a trial trains (psutil, a 40-s trial here); in earlier versions of this bench the
# bare loops of rounds 2.. ran beside the idle Ray the trials had started, those of round 1 beside none, and round 1's
# ratios read 1.054 and 1.140 where the other rounds' medians read 1.031 and 1.053. Not the only cause: after this
# change round 1 read 1.028/1.071 and 1.023/1.065 in two runs, but 1.072/1.169 in a third.
RAY_BESIDE = {BARE_PLAIN: None, BARE_LIKE: None, TARGET_PATH: False, TORCH_TRAINER_PATH: True}


def beside_its_ray(dashboard: bool | None, run: Callable[[], object]) -> Callable[[], object]:
    """`run`, called with the local Ray `RAY_BESIDE` gives its side (`None`: no Ray) started afresh before it."""
    def run_beside() -> object:
        import ray

        from trainables.local_ray import init_local_ray, local_cpu_slots

        ray.shutdown()
        if dashboard is not None:
            init_local_ray(local_cpu_slots(1), dashboard=dashboard)
        return run()
    return run_beside


def tune_trial(cfg: dict, use_gpu: bool) -> list[dict]:
    """One trial run as a study runs a one-worker trial: the loop inside its Tune actor; its epoch history."""
    from ray import tune

    from trainables.local_ray import init_local_ray, local_cpu_slots
    from trainables.session import TuneSession

    def one_worker_trial(config: dict) -> None:  # reports go through the session; Tune takes no return value
        LOOPS[config.get("task", "clf")](config, session=TuneSession())

    init_local_ray(local_cpu_slots(1), dashboard=RAY_BESIDE[TARGET_PATH])
    loop = tune.with_resources(one_worker_trial, {"CPU": 1, "GPU": int(use_gpu)})
    with tempfile.TemporaryDirectory() as storage:
        grid = tune.Tuner(loop, param_space=cfg, run_config=tune.RunConfig(storage_path=storage, verbose=0)).fit()
        (result,) = grid
        if result.error or result.metrics.get(STATUS_KEY) != TrialStatus.COMPLETED:
            raise SystemExit(f"Tune trial ended {result.metrics.get(STATUS_KEY)}: {result.error}")
        return result.metrics_dataframe.to_dict("records")


SHORT_STUDY = ["--variants", "lars_nowarmup", "--confirm", "0", "--num-samples", "24", "--set", "epochs=1", "--set",
               "limit=600", "--set", "test_limit=200"]  # 24 one-step trials: what the platform costs per trial
FIXED_COST = re.compile(r"fixed cost: ([\d.]+) s .* ([\d.]+) s from the last")


@dataclass
class SlotSpans:
    """A study's slot-seconds from its parent run's start to its end, split: trial runs, the gaps between runs on a
    slot, before each slot's first run and after its last."""

    span: float
    runs: float
    gaps: list[float]
    before: float
    after: float


def slot_spans(parent, trials: list, concurrency: int) -> SlotSpans:
    """`SlotSpans` from the MLflow runs' times: each trial run goes to the slot that freed last before it started
    (else the one that frees first), as Tune fills a slot once its trial ends."""
    start, end = parent.info.start_time / 1000, parent.info.end_time / 1000
    first: list[float | None] = [None] * concurrency  # each slot's first run's start
    free = [start] * concurrency  # when each slot's last run ended
    gaps, runs = [], 0.0
    for run in sorted(trials, key=lambda r: r.info.start_time):
        began, ended = run.info.start_time / 1000, run.info.end_time / 1000
        ready = [i for i in range(concurrency) if free[i] <= began]
        slot = max(ready, key=free.__getitem__) if ready else min(range(concurrency), key=free.__getitem__)
        if first[slot] is None:
            first[slot] = began
        else:
            gaps.append(max(began - free[slot], 0.0))
        free[slot], runs = ended, runs + ended - began
    before = sum((f if f is not None else end) - start for f in first)  # a slot no trial ran on: all of it
    return SlotSpans(end - start, runs, gaps, before, sum(end - f for f, s in zip(free, first) if s is not None))


def study_costs(data_dir: str) -> list[str]:
    """Run the short-trial `demo` study (`SHORT_STUDY`) and print its costs: trials/min, slot-seconds per trial
    beyond training, each trial's phases (median and IQR over its trials, from MLflow) and the fixed costs."""
    import ray
    from mlflow.tracking import MlflowClient

    # the trials' lines leave this process's Ray running: its daemons would share the 2 cores with the study's own
    # Ray (the fixed cost read 16.3 s here with it up, 12-13 s for the same study run alone)
    ray.shutdown()
    with tempfile.TemporaryDirectory() as storage:
        cmd = [sys.executable, "-m", "study.run", "--space", "demo", *SHORT_STUDY, "--data-dir", data_dir,
               "--storage", storage]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        process_wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"the study failed ({done.returncode}): {done.stderr[-2000:]}")
        client = MlflowClient(f"sqlite:///{Path(storage) / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
        (parent,) = [r for r in runs if TRIAL_ID_TAG not in r.data.tags]
        trials = [r for r in runs if TRIAL_ID_TAG in r.data.tags]
    loop_wall = parent.data.metrics[STUDY_WALL_METRIC]
    concurrency = int(parent.data.params["resources.max_concurrent"])
    slot_seconds = loop_wall * concurrency / len(trials)
    slots = slot_spans(parent, trials, concurrency)

    def metric(key: str) -> list[float]:
        return [r.data.metrics[key] for r in trials if key in r.data.metrics]

    run_wall = [(r.info.end_time - r.info.start_time) / 1000 for r in trials]
    phases = {"start → report, less setup and training: actor, eval, checkpoint": metric("launch_seconds"),
              "the loop's setup (data, model, optimizer)": metric("setup_seconds"),
              "training (epoch_seconds)": metric("epoch_seconds"),
              "the report on the driver → MLflow run closed": [
                  w - o - e for w, o, e in zip(run_wall, metric("start_overhead_seconds"), metric("epoch_seconds"))],
              "trial run, MLflow start → end": run_wall,
              "a run's end → the next run on its slot (Tune, the search)": slots.gaps or [0.0]}
    training = statistics.mean(metric("epoch_seconds"))
    fixed = FIXED_COST.search(done.stdout)
    lines = [f"  short trials: demo, {len(trials)} one-step trials, {concurrency} at a time: process {process_wall:.0f} s, "
             f"Tune loop {loop_wall:.1f} s = {len(trials) / loop_wall * 60:.0f} trials/min; {slot_seconds:.2f} "
             f"slot-seconds per trial, {slot_seconds - training:.2f} beyond training (target <= 1)",
             f"    {'phase of a trial (seconds)':64s} {'median':>7s} {'IQR':>16s}"]
    for name, values in phases.items():
        median, low, high = spread(values)
        lines.append(f"    {name:64s} {median:7.2f}   [{low:5.2f}, {high:5.2f}]")
    lines += [f"  slot-seconds per trial, the study's span ({slots.span:.1f} s from its parent run's start to its end) "
              f"split: trial runs {slots.runs / len(trials):.2f}, between runs {sum(slots.gaps) / len(trials):.2f}, "
              f"before each slot's first run (Tune's start, the trial actors' start and imports) "
              f"{slots.before / len(trials):.2f}, after each slot's last run (the stages, the summary) "
              f"{slots.after / len(trials):.2f}",
              f"  the study driver's CPU: {parent.data.metrics[DRIVER_CPU_METRIC]:.1f} s, "
              f"{parent.data.metrics[DRIVER_CPU_METRIC] / len(trials):.3f} s per trial (Tune, the search, MLflow writes)"]
    if fixed:
        lines.append(f"  fixed cost: {fixed[1]} s from the process's start to the first trial, {fixed[2]} s from the "
                     "last trial's end to exit (target <= 10 s each)")
    return lines


if __name__ == "__main__":
    main()
