"""`python -m optim.bench`: ms/step of every optimizer on ResNet-18's parameters, with ratios to torch's
foreach SGD-momentum and Adam measured in the same run: interleaved rounds, each ratio's median and
interquartile range over its rounds, and a target met only when the whole IQR meets it.

Each optimizer is timed twice, with the product's defaults: as at a run's start (`lars`) and as in a long run
(`lars@long`: from the step where the default `fused=None` runs the compiled passes of `optim.fused` on the
CPU, `optim.layerwise.fuse_step`); the one-off compile is timed and printed, not counted in ms/step.

    python -m optim.bench [--device cpu|cuda] [--rounds 15] [--steps 5] [--dtype float32] [--threads 1]
                          [--only lars lamb ...] [--fused default|true|false]

On the CPU the steps run on one thread and are timed by that thread's own CPU time (`time.thread_time`),
so another process taking the core is not counted: on the 2-core CI machine, wall-clock medians of
LARS / SGD-momentum moved 1.09 … 1.51 between back-to-back runs. With more threads (or on CUDA) the
clock is wall time (synchronised on CUDA).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torchvision

from optim.allocator import keep_freed_memory
from optim.checks import count_arg
from optim.factory import build_optimizer, spec_of
from optim.layerwise import LayerwiseOptimizer, fuse_step

WD = 5e-4

CONFIGS: dict[str, tuple[str, dict]] = {
    "lars": ("lars", dict(lr=0.1, momentum=0.9, weight_decay=WD)),
    "larc": ("larc", dict(lr=0.1, momentum=0.9, weight_decay=WD)),
    "tvlars": ("tvlars", dict(lr=0.1, momentum=0.9, weight_decay=WD, lam=1e-3, delay_steps=10)),
    "lars_paper_denominator": ("lars", dict(lr=0.1, momentum=0.9, weight_decay=WD, trust_denominator="paper")),
    "lars_adaptive_clip": ("lars", dict(lr=0.1, momentum=0.9, weight_decay=WD, clip_mode="adaptive")),
    "lamb": ("lamb", dict(lr=1e-3, weight_decay=WD)),
    "lambc": ("lambc", dict(lr=1e-3, weight_decay=WD, clip_upper=1.0)),
    "clars": ("clars", dict(lr=0.1, momentum=0.9, weight_decay=WD)),
}
# targets of the optimizer step alone: (configurations, baseline key, largest ratio to it)
TARGETS = ((("lars", "larc", "tvlars"), "sgd", 1.10), (("lamb", "lambc"), "adam", 1.00))
TELEMETRY_TARGET = 1.03  # telemetry on / off, every configuration
BASELINES = {"sgd": "torch SGD-momentum foreach", "adam": "torch Adam foreach"}
# The weights' layout: a trial's, whose model is channels_last (`trainables.worker.WorkerEnv.memory_format`, which
# optim does not import). The LARS family's eager step took 29.2 ms on ResNet-18 in it before the memory-order views
# of `optim.layerwise.memory_order_view`, against 15.9 ms contiguous, where this bench then measured it.
MEMORY_FORMAT = torch.channels_last
BUILDS = 5  # fresh memory layouts per optimizer and run (see `run`)
PHASES = ("", "@long")  # label suffixes: timed from a run's first step, and from the step its default fuses


def spread(ratios: list[float]) -> tuple[float, float, float]:
    """Median and interquartile range (inclusive quartiles) of paired ratios."""
    low, _, high = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
    return statistics.median(ratios), low, high


def _clock(device: torch.device) -> Callable[[], float]:
    """This thread's CPU seconds on a one-thread CPU run; synchronised wall seconds otherwise."""
    if device.type == "cpu" and torch.get_num_threads() == 1:
        return time.thread_time

    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()
    return now


def _alternating_ms(a: Callable[[], None], b: Callable[[], None], steps: int,
                    now: Callable[[], float]) -> tuple[float, float]:
    """ms/step of `a` and `b` stepped in turn (a b a b …), each step timed on its own.

    So each one always follows the other: timed in blocks, whichever ran second after the same fused kernels
    ran ~4–7% faster (telemetry on/off read 0.93 in a fixed order, 0.96 with A B B A blocks), and an eager
    block after itself ~15% faster than a step after another optimizer's.
    """
    a(), b()  # untimed: both start with their state hot
    spent = [0.0, 0.0]
    for _ in range(steps):
        for i, step in enumerate((a, b)):
            start = now()
            step()
            spent[i] += now() - start
    return spent[0] / steps * 1e3, spent[1] / steps * 1e3


def _stepper(name: str, hp: dict, named: list, params: list, sample_norms: list, telemetry: bool,
             long_run: bool, fused: bool | None = None) -> Callable[[], None]:
    """A closure doing one optimizer step of a run at its start, or (`long_run`) at the step where each group's
    default fuses, with `fused` set when given (CLARS gets its per-sample norms; telemetry collected every 50)."""
    opt = build_optimizer(name, named, **hp, **({"fused": fused} if long_run and fused is not None else {}))
    assert isinstance(opt, LayerwiseOptimizer)
    for group in opt.param_groups:
        group["step"] = opt.fuse_step_of(group) if long_run else 0
    recorder = opt.enable_telemetry() if telemetry else None

    def step() -> None:
        if name == "clars":
            opt.set_per_sample_grad_norms(params, sample_norms)
        opt.step()
        if recorder is not None and len(recorder) >= 50:
            recorder.collect()  # the per-epoch hand-over, amortised as in training

    return step


def _baselines(params: list) -> dict[str, Callable[[], None]]:
    """Fresh torch SGD-momentum and Adam (foreach) over `params`: their steps."""
    return {"sgd": torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=WD, foreach=True).step,
            "adam": torch.optim.Adam(params, lr=1e-3, weight_decay=WD, foreach=True).step}


def _with_grad(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """A copy of `weight` at a new address, with a copy of `grad` as its gradient."""
    copy = weight.detach().clone()
    copy.grad = grad.clone()
    return copy


def _variants(label: str, named: list, params: list, sample_norms: list, first_step_s: dict[str, float],
              fused: bool | None = None) -> dict[str, Callable[[], None]]:
    """Fresh steppers of one configuration in every phase, telemetry off and on; each one's first step timed."""
    name, hp = CONFIGS[label]
    variants = {}
    for suffix in PHASES:
        for telemetry in (False, True):
            key = label + suffix + ("+telemetry" if telemetry else "")
            variants[key] = _stepper(name, hp, named, params, sample_norms, telemetry, suffix == "@long", fused)
            began = time.perf_counter()
            variants[key]()  # the first step: the one-off compile where the step is fused
            first_step_s.setdefault(key, time.perf_counter() - began)
    return variants


def _round(label: str, baselines: dict[str, Callable[[], None]], variants: dict[str, Callable[[], None]],
           steps: int, now: Callable[[], float], samples: dict[str, Any]) -> None:
    """One round of `label`: SGD and Adam in turn, then each phase's telemetry off/on pair; ratios within it."""
    base = dict(zip(("sgd", "adam"), _alternating_ms(baselines["sgd"], baselines["adam"], steps, now)))
    own = {}
    for suffix in PHASES:
        off, on = label + suffix, label + suffix + "+telemetry"
        own[off], own[on] = _alternating_ms(variants[off], variants[on], steps, now)
    for key, ms in own.items():
        samples.setdefault(key, []).append(ms)
        for b, b_ms in base.items():
            samples.setdefault(f"{key}/{b}", []).append(ms / b_ms)
    for suffix in PHASES:
        samples.setdefault(label + suffix + "/telemetry", []).append(
            own[label + suffix + "+telemetry"] / own[label + suffix])
    for b, b_ms in base.items():
        samples[b].append(b_ms)


def run(device: str = "cpu", rounds: int = 15, steps: int = 5, dtype: str = "float32",
        only: list[str] | None = None, fused: bool | None = None) -> dict[str, Any]:
    """Per-round samples: ms/step of each optimizer in each of `PHASES` (telemetry off, and on as `+telemetry`)
    and of the baselines, per-round ratios `key/sgd`, `key/adam`, `label/telemetry`; `first step s`: each
    stepper's first (untimed) step, in seconds. `fused` (None: the default) is set on the long-run phase only.

    Each round times SGD and Adam, then each phase's telemetry off/on pair, every pair stepped in turn (so every
    step timed follows another optimizer's); a ratio is taken within a round, so drift between rounds cancels.
    Weights, gradients and optimizers are built afresh `BUILDS` times over the rounds, each time behind a pad of
    random size (a new memory layout, as in Stabilizer's layout randomisation): one instance of the same fused
    kernel stepped in 11.9 ms and another in 13.5 ms in one run, and a run whose layout was slow moved every
    fused median ~9% from the next run's. (A new layout every round measured worse: fused medians up to 6.8%
    apart over three runs, against 23 of 26 ratios within 1% with 5.) The builds run in blocks, each block every
    configuration in turn, so each configuration's rounds spread over the whole run: measured one configuration
    after another, a disturbance of one stretch of the run fell on one configuration's rounds only (LAMBC/Adam
    fused 0.637 in one run, 0.587 and 0.593 in the next two).
    """
    dev = torch.device(device)
    model = torchvision.models.resnet18().to(dev, getattr(torch, dtype), memory_format=MEMORY_FORMAT)
    gen = torch.Generator(device=dev).manual_seed(0)
    grads = [torch.empty_like(p).copy_(torch.randn(p.shape, generator=gen, device=dev, dtype=p.dtype) * 1e-2)
             for p in model.parameters()]  # laid out as their weights, as autograd's are
    now = _clock(dev)
    adapted = sum(p.numel() for p in model.parameters() if p.ndim > 1)  # the trust-ratio group (exclude_1d)
    labels = [label for label in CONFIGS if not only or label in only]
    fuse_steps = {label: fuse_step(adapted, spec_of(CONFIGS[label][0]).cls.fuse_after_element_steps) for label in labels}
    samples: dict[str, Any] = {"sgd": [], "adam": [], "long run from step": fuse_steps, "first step s": {},
                               "long run fused": fused}
    shifts = random.Random(0)
    per_build = -(-rounds // min(BUILDS, rounds))
    for first_round in range(0, rounds, per_build):  # a block: every configuration on a fresh layout, in turn
        for label in labels:
            # new weights, gradients and optimizers, behind a pad of random size: another memory layout
            pad = torch.empty(shifts.randrange(1, 1 << 14) * 64, dtype=torch.uint8, device=dev)
            named = [(n, _with_grad(p, g)) for (n, p), g in zip(model.named_parameters(), grads)]
            params = [p for _, p in named]
            sample_norms = [torch.rand((), device=dev, dtype=p.dtype) + 0.5 for p in params]
            baselines = _baselines(params)
            variants = _variants(label, named, params, sample_norms, samples["first step s"], fused)
            del pad
            for _ in range(min(per_build, rounds - first_round)):
                _round(label, baselines, variants, steps, now, samples)
    return samples


def _ratio(values: list[float]) -> str:
    median, low, high = spread(values)
    return f"{median:.3f} [{low:.3f}, {high:.3f}]"


def _verdict(values: list[float], target: float) -> str:
    median, low, high = spread(values)
    if high <= target:
        return "met (whole IQR)"
    return "missed (whole IQR above)" if low > target else "undecided (IQR straddles it)"


def report(samples: dict[str, Any]) -> str:
    """The table (medians with [IQR] over rounds) and every target's verdict."""
    labels = [c + suffix for c in CONFIGS if c in samples for suffix in PHASES]
    lines = [f"{BASELINES[b]}: {statistics.median(samples[b]):.2f} ms/step" for b in BASELINES]
    first = samples.get("first step s", {})
    forced = samples.get("long run fused")
    how = "where fused=None fuses on the CPU" if forced is None else f"with fused={forced}"
    from_step = ", ".join(f"{label} {step}" for label, step in samples["long run from step"].items())
    lines.append(f"@long: a long run's step, from the step {how} ({from_step}); without: a run's first steps (eager)")
    lines.append("first step (s; compiles where fused): "
                 + ", ".join(f"{k} {v:.2f}" for k, v in first.items() if not k.endswith("+telemetry")))
    lines += ["", f"{'optimizer':30s} {'ms/step':>8s} {'vs SGD-m [IQR]':>22s} {'vs Adam [IQR]':>22s} "
                  f"{'telemetry on/off [IQR]':>23s}"]
    for label in labels:
        for key in (label, label + "+telemetry"):
            tel = _ratio(samples[label + "/telemetry"]) if key != label else ""
            lines.append(f"{key:30s} {statistics.median(samples[key]):8.2f} {_ratio(samples[key + '/sgd']):>22s} "
                         f"{_ratio(samples[key + '/adam']):>22s} {tel:>23s}")
    targets = [f"{label} <= {limit:.2f}x {BASELINES[base]}: {_ratio(samples[f'{label}/{base}'])} "
               f"{_verdict(samples[f'{label}/{base}'], limit)}"
               for group, base, limit in TARGETS for label in labels if label.split("@")[0] in group]
    targets += [f"{label} telemetry on/off <= {TELEMETRY_TARGET:.2f}: {_ratio(samples[label + '/telemetry'])} "
                f"{_verdict(samples[label + '/telemetry'], TELEMETRY_TARGET)}" for label in labels]
    rounds = len(samples[labels[0]]) if labels else 0
    return "\n".join(lines + ["", f"targets (median [IQR] over {rounds} rounds; met only by the whole IQR):"]
                     + ["  " + t for t in targets])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m optim.bench", description=__doc__.partition("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--rounds", type=count_arg, default=15, help="interleaved rounds (default 15)")
    parser.add_argument("--steps", type=count_arg, default=5, help="timed steps per optimizer and round (default 5)")
    parser.add_argument("--dtype", default="float32", help="the weights' dtype (default float32)")
    parser.add_argument("--threads", type=count_arg, default=1,
                        help="torch CPU threads (default 1: timed by the thread's own CPU time)")
    parser.add_argument("--only", nargs="*", choices=list(CONFIGS), help="measure only these configurations")
    parser.add_argument("--fused", choices=("default", "true", "false"), default="default",
                        help="the long run's `fused` (default: the product's, None: on CUDA it stays eager; "
                             "true: the compiled passes, Triton on CUDA)")
    args = parser.parse_args()
    allocator = "glibc, freed memory kept" if keep_freed_memory() else "default allocator"
    torch.set_num_threads(args.threads)
    clock = "thread CPU time" if _clock(torch.device(args.device)) is time.thread_time else "wall time"
    fused = {"default": None, "true": True, "false": False}[args.fused]
    samples = run(args.device, args.rounds, args.steps, args.dtype, args.only, fused)
    print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} clock={clock} "
          f"allocator={allocator} params=ResNet-18 ({sum(p.numel() for p in torchvision.models.resnet18().parameters()):,}, "
          f"{str(MEMORY_FORMAT).removeprefix('torch.')})")
    print(report(samples))


if __name__ == "__main__":
    main()
