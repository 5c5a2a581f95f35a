"""The benchmark runs end to end and reports every ratio it promises (timings are not asserted)."""

from __future__ import annotations

from optim.bench import report, run


def test_bench_reports_ratios_and_targets():
    ms = run(rounds=1, steps=1, only=["lars", "lamb"])
    for key in ("lars", "lars+telemetry", "lamb", "lamb+telemetry", "torch_sgd_momentum", "torch_adam"):
        assert ms[key] > 0
        if not key.startswith("torch"):
            assert ms[key + "/sgd"] > 0 and ms[key + "/adam"] > 0
    assert ms["lars/telemetry"] > 0
    text = report(ms)
    assert "lars <= 1.30x SGD-m" in text and "lamb <= 1.10x Adam" in text
    assert "lars telemetry overhead <= 3%" in text and "tvlars" not in text


def test_trainables_bench_step_and_phase_lines(cifar10_dir, data_cache):
    """trainables.bench's CPU-measurable parts run on a tiny setting and print every promised figure."""
    import torch

    from optim.factory import LAYERWISE
    from trainables.bench import epoch_phases, step_costs

    cfg = dict(model="resnet8", lr=1.0, batch_size=64, epochs=1, seed=0, threads=2, data_dir=cifar10_dir, limit=256)
    lines = step_costs(cfg, torch.device("cpu"), rounds=1, steps=1)
    assert "steps/s" in lines[0] and "4 micro-batches of 16" in lines[0]
    assert [line.split()[1] for line in lines[1:]] == list(LAYERWISE)
    assert all("on/off" in line and "IQR" in line for line in lines[1:])
    phases = epoch_phases(cfg, torch.device("cpu"), batch=128, micro=32, bn_group=32, epochs=1)
    assert {"data", "forward/backward", "optimizer", "eval", "checkpoint"} <= set(phases)
    assert all(phases[k] > 0 for k in ("data", "forward/backward", "optimizer", "eval", "checkpoint"))
    assert phases["micro_batch_size"] == 32
