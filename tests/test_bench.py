"""The benchmark runs end to end and reports every ratio it promises (timings are not asserted)."""

from __future__ import annotations

import pytest

from optim.bench import report, run


def test_bench_reports_ratios_and_targets():
    samples = run(rounds=2, steps=1, only=["lars", "lamb"])
    keys = [name + phase + telemetry for name in ("lars", "lamb") for phase in ("", "@long")
            for telemetry in ("", "+telemetry")]
    for key in keys + ["sgd", "adam"]:
        assert len(samples[key]) == (4 if key in ("sgd", "adam") else 2) and min(samples[key]) > 0
        if key not in ("sgd", "adam"):
            assert min(samples[key + "/sgd"] + samples[key + "/adam"]) > 0
    assert len(samples["lars/telemetry"]) == len(samples["lars@long/telemetry"]) == 2
    assert list(samples["first step s"]) == keys and min(samples["first step s"].values()) > 0
    text = report(samples)
    assert "lars <= 1.10x torch SGD-momentum foreach" in text and "lamb <= 1.00x torch Adam foreach" in text
    assert "lars@long <= 1.10x torch SGD-momentum foreach" in text and "lamb@long <= 1.00x" in text
    assert "lars telemetry on/off <= 1.03" in text and "lars@long telemetry on/off <= 1.03" in text
    assert "where fused=None fuses on the CPU (lars 1713, lamb 857)" in text
    assert "tvlars" not in text and "over 2 rounds" in text and "first step (s; compiles where fused): lars " in text


def test_bench_long_run_takes_the_fused_flag():
    """`--fused false`: the long-run phase steps eagerly (Dynamo compiles nothing), and the report says so."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    samples = run(rounds=1, steps=1, only=["lars"], fused=False)
    assert counters["stats"]["unique_graphs"] == 0
    assert "from the step with fused=False (lars 1713)" in report(samples)


def test_spread_and_verdicts():
    """Median and inclusive quartiles; a target is met only when the whole IQR meets it."""
    from optim.bench import _verdict, spread

    assert spread([1.0, 2.0, 3.0, 4.0, 5.0]) == (3.0, 2.0, 4.0)
    assert _verdict([1.00, 1.05, 1.09], 1.10).startswith("met")
    assert _verdict([1.00, 1.05, 1.12, 1.20], 1.10).startswith("undecided")
    assert _verdict([1.11, 1.12, 1.13], 1.10).startswith("missed")


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


# Each side of trainables.bench's trial lines, in turn: what Ray is up while it runs (None: none; else its dashboard).
RAY_BESIDE_PROBE = """
import json
import ray
from ray._private.worker import get_dashboard_url  # no public API says whether this Ray has its dashboard
from trainables.bench import BARE_LIKE, RAY_BESIDE, TARGET_PATH, TORCH_TRAINER_PATH, beside_its_ray
from trainables.environment import set_library_defaults

def probe():
    return bool(get_dashboard_url()) if ray.is_initialized() else None

set_library_defaults()
order = [TORCH_TRAINER_PATH, BARE_LIKE, TARGET_PATH]
print(json.dumps({name: beside_its_ray(RAY_BESIDE[name], probe)() for name in order}))
ray.shutdown()
"""


def test_trainables_bench_runs_each_side_beside_its_own_ray(tmp_path):
    """No Ray is up while a bare loop runs, even after a trial; the Tune trial gets a study's one-worker Ray
    (no dashboard) and the TorchTrainer one with the dashboard, whatever ran before."""
    import json
    import sys

    from subprocs import assert_succeeds
    from trainables.bench import BARE_LIKE, TARGET_PATH, TORCH_TRAINER_PATH

    done = assert_succeeds([sys.executable, "-c", RAY_BESIDE_PROBE], tmp_path / "probe.log", timeout=180)
    assert json.loads(done.output.strip().splitlines()[-1]) == {TORCH_TRAINER_PATH: True, BARE_LIKE: None,
                                                                   TARGET_PATH: False}


def test_a_studys_slot_seconds_split_into_runs_gaps_and_its_ends():
    """Two slots over a 10-s study: runs 1–3 and 1.5–4 start the slots; 3.2–5 follows the first (gap 0.2), 4.1–6
    the second (0.1, not the first, still busy); the split adds up to 2 × 10 slot-seconds."""
    from types import SimpleNamespace

    from trainables.bench import slot_spans

    def run(start: float, end: float) -> SimpleNamespace:
        return SimpleNamespace(info=SimpleNamespace(start_time=start * 1000, end_time=end * 1000))

    spans = slot_spans(run(0, 10), [run(4.1, 6), run(1, 3), run(3.2, 5), run(1.5, 4)], concurrency=2)
    assert spans.span == 10 and spans.runs == pytest.approx(8.2)
    assert spans.gaps == pytest.approx([0.2, 0.1])
    assert spans.before == pytest.approx(2.5) and spans.after == pytest.approx(9.0)
    assert spans.runs + sum(spans.gaps) + spans.before + spans.after == pytest.approx(20.0)
    alone = slot_spans(run(0, 10), [run(1, 3)], concurrency=2)  # a slot no trial ran on is all "before"
    assert (alone.before, alone.after) == pytest.approx((1 + 10, 7)) and alone.runs + alone.before + alone.after == 20



@pytest.mark.parametrize("module", ["optim.bench", "trainables.bench", "study.transfer_bench"])
def test_a_bench_rejects_a_count_below_one_before_it_starts(module):
    """`--rounds 0` / `--repeats 0` once divided by zero, or started the source studies (transfer_bench)."""
    import subprocess
    import sys

    flag = "--repeats" if module == "study.transfer_bench" else "--rounds"
    done = subprocess.run([sys.executable, "-m", module, flag, "0"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert done.stderr.splitlines()[-1] == f"python -m {module}: error: argument {flag}: must be >= 1, got 0"


def test_count_arg_takes_whole_numbers_from_one():
    import argparse

    from optim.checks import count_arg

    assert count_arg("3") == 3
    for text, said in (("0", "must be >= 1, got 0"), ("two", "expected a whole number >= 1, got 'two'"),
                       ("1.5", "expected a whole number >= 1, got '1.5'")):
        with pytest.raises(argparse.ArgumentTypeError, match=said.replace("(", r"\(")):
            count_arg(text)
