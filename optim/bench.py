"""`python -m optim.bench`: ms/step of every optimizer on ResNet-18's parameters, with ratios to torch's
foreach SGD-momentum and Adam measured in the same run (interleaved rounds, medians of paired ratios).

    python -m optim.bench [--device cpu|cuda] [--rounds 9] [--steps 5] [--dtype float32] [--threads N]
                          [--only lars lamb ...]
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import time
from collections.abc import Callable

import torch
import torchvision

from optim.factory import build_optimizer
from optim.layerwise import LayerwiseOptimizer

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
SGD_GROUP = {"lars", "larc", "tvlars", "lars_paper_denominator", "lars_adaptive_clip", "clars"}


def steady_state_allocator() -> str:
    """Keep freed heap memory mapped (glibc mallopt), as in a long-running training process.

    With glibc defaults, whether a step's temporaries page-fault depends on what ran before
    (measured here: torch SGD 12 ms alone, 26 ms after an Adam step), which makes ratios meaningless.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return "default allocator"
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    ok = (libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 2**31 - 1)
          and libc.mallopt(m_top_pad, 256 << 20))
    return "glibc, no trimming (steady state)" if ok else "default allocator (mallopt refused)"


def _timer(device: torch.device) -> Callable[[], float]:
    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()
    return now


def _block_ms(step: Callable[[], None], steps: int, now: Callable[[], float]) -> float:
    step()  # one untimed step: the block starts with this optimizer's state hot
    start = now()
    for _ in range(steps):
        step()
    return (now() - start) / steps * 1e3


def _stepper(name: str, hp: dict, named: list, params: list, sample_norms: list, telemetry: bool):
    """A closure doing one optimizer step (CLARS gets its per-sample norms; telemetry collected every 50)."""
    opt = build_optimizer(name, named, **hp)
    assert isinstance(opt, LayerwiseOptimizer)
    recorder = opt.enable_telemetry() if telemetry else None

    def step() -> None:
        if name == "clars":
            opt.set_per_sample_grad_norms(params, sample_norms)
        opt.step()
        if recorder is not None and len(recorder) >= 50:
            recorder.collect()  # the per-epoch hand-over, amortised as in training

    return step


def run(device: str = "cpu", rounds: int = 9, steps: int = 5, dtype: str = "float32",
        only: list[str] | None = None) -> dict[str, float]:
    """Median ms/step per optimizer, each timed in rounds beside the two torch baselines.

    Every ratio is the median of per-round ratios (the optimizer's block over the baseline blocks
    timed in the same round; telemetry on over off likewise), so load drift on a shared machine
    cancels. Each optimizer pair is freed before the next one is built.
    """
    dev = torch.device(device)
    model = torchvision.models.resnet18().to(dev, getattr(torch, dtype))
    params = list(model.parameters())
    gen = torch.Generator(device=dev).manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, device=dev, dtype=p.dtype) * 1e-2
    named = list(model.named_parameters())
    sgd = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=WD, foreach=True)
    adam = torch.optim.Adam(params, lr=1e-3, weight_decay=WD, foreach=True)
    sample_norms = [torch.rand((), device=dev, dtype=p.dtype) + 0.5 for p in params]
    now = _timer(dev)
    results: dict[str, float] = {}
    baseline_samples: dict[str, list[float]] = {"torch_sgd_momentum": [], "torch_adam": []}
    for label, (name, hp) in CONFIGS.items():
        if only and label not in only:
            continue
        # telemetry off and on are separate optimizers timed in the same rounds, so their ratio is paired
        variants = {label: _stepper(name, hp, named, params, sample_norms, telemetry=False),
                    label + "+telemetry": _stepper(name, hp, named, params, sample_norms, telemetry=True)}
        own: dict[str, list[float]] = {k: [] for k in variants}
        sgd_ms, adam_ms = [], []
        for _ in range(rounds):
            sgd_ms.append(_block_ms(sgd.step, steps, now))
            for key, step in variants.items():
                own[key].append(_block_ms(step, steps, now))
            adam_ms.append(_block_ms(adam.step, steps, now))
        for key, times in own.items():
            results[key] = statistics.median(times)
            results[key + "/sgd"] = statistics.median([o / s for o, s in zip(times, sgd_ms)])
            results[key + "/adam"] = statistics.median([o / a for o, a in zip(times, adam_ms)])
        results[label + "/telemetry"] = statistics.median(
            [on / off for on, off in zip(own[label + "+telemetry"], own[label])])
        baseline_samples["torch_sgd_momentum"] += sgd_ms
        baseline_samples["torch_adam"] += adam_ms
        del variants, step  # free this pair's state before the next pair is built
    for key, values in baseline_samples.items():
        results[key] = statistics.median(values)
    return results


def report(ms: dict[str, float]) -> str:
    lines = [f"torch SGD-momentum foreach: {ms['torch_sgd_momentum']:.2f} ms/step, "
             f"torch Adam foreach: {ms['torch_adam']:.2f} ms/step (medians of the run)", "",
             f"{'optimizer':34s} {'ms/step':>8s} {'vs SGD-m':>9s} {'vs Adam':>8s} {'telemetry on/off':>17s}"]
    for label in [c for c in CONFIGS if c in ms]:
        for key in (label, label + "+telemetry"):
            tel = f"{ms[label + '/telemetry']:.3f}" if key != label else ""
            lines.append(f"{key:34s} {ms[key]:8.2f} {ms[key + '/sgd']:8.2f}x {ms[key + '/adam']:7.2f}x {tel:>17s}")
    targets = []
    for label in [c for c in ("lars", "larc", "tvlars") if c in ms]:
        r = ms[label + "/sgd"]
        targets.append(f"{label} <= 1.30x SGD-m: {r:.2f}x {'ok' if r <= 1.3 else 'MISSED'}")
    for label in [c for c in ("lamb", "lambc") if c in ms]:
        r = ms[label + "/adam"]
        targets.append(f"{label} <= 1.10x Adam: {r:.2f}x {'ok' if r <= 1.1 else 'MISSED'}")
    for label in [c for c in CONFIGS if c in ms]:
        over = ms[label + "/telemetry"] - 1
        targets.append(f"{label} telemetry overhead <= 3%: {over * 100:+.1f}% {'ok' if over <= 0.03 else 'MISSED'}")
    return "\n".join(lines + ["", "targets:"] + ["  " + t for t in targets])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--only", nargs="*", choices=list(CONFIGS), help="measure only these configurations")
    args = parser.parse_args()
    allocator = steady_state_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    ms = run(args.device, args.rounds, args.steps, args.dtype, args.only)
    print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"allocator={allocator} params=ResNet-18 ({sum(p.numel() for p in torchvision.models.resnet18().parameters()):,})")
    print(report(ms))


if __name__ == "__main__":
    main()
