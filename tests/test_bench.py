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
