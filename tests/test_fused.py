"""The compiled (fused) step: the same numbers as the eager one and timm's, when it runs, and what happens when
it cannot compile."""

from __future__ import annotations

import copy
import threading
import warnings

import pytest
import torch
import torch._dynamo
import torch._inductor.config
from torch._dynamo.utils import counters

from conftest import max_rel_err, small_convnet, train
from optim import build_optimizer
from optim.layerwise import fuse_step
from test_reference_timm import CASES, STEPS
from test_telemetry_and_state import CONFIGS, clars_hook, make

FUSABLE = [k for k in CONFIGS if k not in ("sgd", "adam")]


@pytest.mark.parametrize("name", list(CASES))
def test_fused_matches_timm(name):
    """float64, 12 steps: the fused step meets the eager path's bound against timm's reference (1e-6)."""
    hp, make_reference = CASES[name]
    ours, reference = small_convnet(), small_convnet()
    ours_losses = train(ours, build_optimizer(name, ours.parameters(), fused=True, **hp), STEPS)
    reference_losses = train(reference, make_reference(reference.parameters()), STEPS)
    assert max_rel_err(ours, reference) <= 1e-6
    assert ours_losses[-1] == pytest.approx(reference_losses[-1], rel=1e-9)
    assert max_rel_err(ours, small_convnet()) > 1e-3


@pytest.mark.parametrize("label", FUSABLE)
def test_fused_matches_eager_with_its_telemetry(label):
    """Every variant (φ(t), LARC's clip, CLARS' norms, adaptive clipping): fused and eager agree, telemetry too."""
    eager, fused = small_convnet(), small_convnet()
    opt_eager, opt_fused = make(label, eager), make(label, fused, fused=True)
    rows_eager, rows_fused = opt_eager.enable_telemetry(every=1), opt_fused.enable_telemetry(every=1)
    train(eager, opt_eager, 6, clars_hook(eager, opt_eager))
    train(fused, opt_fused, 6, clars_hook(fused, opt_fused))
    assert max_rel_err(fused, eager) <= 1e-9
    assert torch.allclose(rows_fused.collect().values, rows_eager.collect().values, rtol=1e-9, atol=0)
    assert max_rel_err(fused, small_convnet()) > 1e-3


def test_default_fuses_a_cpu_run_from_its_fuse_step_and_in_a_worker_thread():
    """fused=None: eager (nothing compiled) before `fuse_step`, compiled from it; in a thread, as Ray runs trials."""
    torch._dynamo.reset()
    counters.clear()
    model, twin = small_convnet(torch.float32), small_convnet(torch.float32)
    opt = build_optimizer("lars", model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    eager = build_optimizer("lars", twin.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3, fused=False)
    adapted = opt.param_groups[0]
    assert adapted["adapt"] and adapted["step"] == 0
    for group in opt.param_groups + eager.param_groups:  # a long run, two steps before this group fuses
        group["step"] = opt.fuse_step_of(adapted) - 2
    graphs: list[int] = []

    def run() -> None:
        train(model, opt, 2, dtype=torch.float32)
        graphs.append(counters["stats"]["unique_graphs"])
        train(model, opt, 3, dtype=torch.float32)
        graphs.append(counters["stats"]["unique_graphs"])

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    assert graphs == [0, 2]  # the norm pass and the update pass
    train(twin, eager, 2, dtype=torch.float32)
    train(twin, eager, 3, dtype=torch.float32)
    assert max_rel_err(model, twin) <= 1e-5 and max_rel_err(twin, small_convnet(torch.float32)) > 1e-3


def test_fuse_step_is_where_the_saving_pays_for_a_compile():
    """10^10 element-steps (LAMB): ResNet-18's adapted weights (11.68 M) fuse at step 857, 78 K weights at 128,206;
    LARS, whose eager step saves less by fusing, after 2·10^10: step 1,713, and so LARC, TVLARS and CLARS."""
    assert fuse_step(11_678_912) == 857 and fuse_step(78_000) == 128_206 and fuse_step(0) == 10**10
    resnet18 = {"params": [torch.empty(11_678_912)]}
    for name in ("lars", "larc", "tvlars", "clars"):
        assert build_optimizer(name, [torch.empty(3, 3)]).fuse_step_of(resnet18) == 1_713
    assert build_optimizer("lamb", [torch.empty(3, 3)]).fuse_step_of(resnet18) == 857
    assert build_optimizer("lambc", [torch.empty(3, 3)]).fuse_step_of(resnet18) == 857


def test_a_compile_that_fails_warns_and_steps_eagerly_by_default_and_raises_when_asked():
    """No C++ compiler: fused=None warns once and takes the eager step (same numbers); fused=True raises."""
    torch._dynamo.reset()
    no_compiler = {"cpp.cxx": ("/nonexistent/c++",), "fx_graph_cache": False, "autotune_local_cache": False}
    hp = dict(CASES["lamb"][0])
    with torch._inductor.config.patch(no_compiler):
        model = small_convnet()
        twin = copy.deepcopy(model)
        auto = build_optimizer("lamb", model.parameters(), **hp)
        eager = build_optimizer("lamb", twin.parameters(), fused=False, **hp)
        for group in auto.param_groups + eager.param_groups:
            group["step"] = fuse_step(sum(p.numel() for p in group["params"]))  # where the default fuses
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train(model, auto, 3)
        train(twin, eager, 3)
        assert [str(w.message).split(":")[0] for w in caught if w.category is RuntimeWarning] == ["LAMB"]
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))

        forced_model = small_convnet()
        forced = build_optimizer("lamb", forced_model.parameters(), fused=True, **hp)
        with pytest.raises(torch._dynamo.exc.TorchDynamoException):
            train(forced_model, forced, 1)
    torch._dynamo.reset()


@pytest.mark.parametrize("value", ["yes", 1])
def test_fused_must_be_a_flag_or_none(value):
    with pytest.raises(ValueError, match="^fused: expected true/false"):
        build_optimizer("lars", small_convnet().parameters(), fused=value)


def test_a_state_saved_before_fused_existed_loads_and_steps():
    """Checkpoints of earlier studies have no `fused` in their groups: they load, default to None and step."""
    model = small_convnet()
    opt = build_optimizer("lars", model.parameters(), lr=0.5, momentum=0.9)
    train(model, opt, 2)
    saved = opt.state_dict()
    for group in saved["param_groups"]:
        del group["fused"]
    resumed = build_optimizer("lars", model.parameters(), lr=0.5, momentum=0.9, fused=False)
    resumed.load_state_dict(saved)
    assert [g["fused"] for g in resumed.param_groups] == [None, None] and resumed.param_groups[0]["step"] == 2
    train(model, resumed, 1)
    assert resumed.param_groups[0]["step"] == 3
