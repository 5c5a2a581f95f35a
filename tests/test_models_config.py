"""Models (stems, init, heads), trial configuration checks, and the Barlow Twins loss."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainables.barlow_twins import barlow_twins_loss, projector
from trainables.config import TrialConfig
from trainables.models import build_model, split_head


@pytest.mark.parametrize("name,size", [("resnet8", 32), ("resnet20", 32), ("resnet18", 32), ("resnet18", 64),
                                       ("resnet34", 64), ("resnet50", 32), ("efficientnet_b0", 32)])
def test_models_classify_their_input_size(name, size):
    model = build_model(name, 7, size).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 7)


def test_cifar_stem_only_below_64_pixels():
    small, large = build_model("resnet18", 10, 32), build_model("resnet18", 10, 64)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1) and isinstance(small.maxpool, nn.Identity)
    assert large.conv1.kernel_size == (7, 7) and isinstance(large.maxpool, nn.MaxPool2d)


def test_init_choices_set_the_weight_scale():
    torch.manual_seed(0)
    kaiming = build_model("resnet8", 10, 32, init="kaiming_uniform").features[0].weight
    torch.manual_seed(0)
    xavier = build_model("resnet8", 10, 32, init="xavier_uniform").features[0].weight
    fan_in, fan_out = 3 * 9, 16 * 9
    assert kaiming.abs().max() <= math.sqrt(6 / fan_in) and kaiming.abs().max() > 0.9 * math.sqrt(6 / fan_in)
    assert xavier.abs().max() <= math.sqrt(6 / (fan_in + fan_out)) < kaiming.abs().max()
    with pytest.raises(ValueError, match="init: unknown 'orthogonal'"):
        build_model("resnet8", 10, 32, init="orthogonal")
    with pytest.raises(ValueError, match="model: unknown 'vit'"):
        build_model("vit", 10, 32)


def test_split_head_exposes_features():
    backbone, dim = split_head(build_model("resnet18", 10, 32))
    assert dim == 512 and backbone(torch.randn(2, 3, 32, 32)).shape == (2, 512)


def _cfg(**kw):
    return TrialConfig.from_dict({"lr": 1.0, **kw}, check_data=False)


def test_config_routes_optimizer_hyperparameters_and_scales_lr():
    cfg = _cfg(optimizer="tvlars", lam=1e-3, delay_epochs=2, momentum=0.9, batch_size=1024)
    assert cfg.optimizer_hyperparameters(steps_per_epoch=10) == {"lam": 1e-3, "delay_steps": 20, "momentum": 0.9,
                                                                 "lr": 1.0}
    scaled = TrialConfig.from_dict({"base_lr": 0.5, "batch_size": 1024, "base_batch": 256}, check_data=False)
    assert scaled.learning_rate() == pytest.approx(1.0)
    linear = TrialConfig.from_dict({"base_lr": 0.5, "batch_size": 1024, "lr_scaling": "linear"}, check_data=False)
    assert linear.learning_rate() == pytest.approx(2.0)


@pytest.mark.parametrize("values,message", [
    ({"lr": 1.0, "lamda": 1e-3}, "lamda: not a trial setting nor a hyperparameter of optimizer 'lars'"),
    ({"lr": 1.0, "epochs": "ten"}, "epochs: expected int, got 'ten'"),
    ({"lr": 1.0, "epochs": 2.5}, "epochs: expected int, got 2.5"),
    ({"lr": 1.0, "batch_size": True}, "batch_size: expected int, got True"),
    ({"lr": -1.0}, "lr: must be"),
    ({}, "lr: give exactly one of lr"),
    ({"lr": 1.0, "base_lr": 1.0}, "lr: give exactly one of lr"),
    ({"lr": 1.0, "optimizer": "lbfgs"}, "optimizer: unknown 'lbfgs'"),
    ({"lr": 1.0, "model": "vgg"}, "model: unknown 'vgg'"),
    ({"lr": 1.0, "epochs": 3, "warmup_epochs": 5}, "warmup_epochs: must be in"),
    ({"lr": 1.0, "delay_epochs": 1}, "delay_epochs: not a trial setting nor a hyperparameter of optimizer 'lars'"),
    ({"lr": 1.0, "optimizer": "lambc", "clip_lower": 2.0, "clip_upper": 1.0}, "clip"),
    ({"lr": 1.0, "task": "bt", "bt_projector": "64-x"}, "bt_projector: expected layer widths"),
    ({"lr": 1.0, "model": "resnet8", "width": 0}, "width: must be >= 1, got 0"),
])
def test_config_rejects_bad_values_naming_the_key(values, message):
    with pytest.raises(ValueError, match=message):
        TrialConfig.from_dict(values, check_data=False)


def test_config_checks_the_data_directory(tmp_path):
    with pytest.raises(ValueError, match=f"cifar10 data at '{tmp_path / 'none'}': directory not found"):
        TrialConfig.from_dict({"lr": 1.0, "data_dir": str(tmp_path / "none")})


def test_barlow_twins_loss_matches_its_definition():
    torch.manual_seed(0)
    z1, z2 = torch.randn(8, 5, dtype=torch.float64), torch.randn(8, 5, dtype=torch.float64)
    c = z1.T @ z2 / 8
    expected = sum((c[i, i] - 1) ** 2 for i in range(5)) + 0.005 * sum(
        c[i, j] ** 2 for i in range(5) for j in range(5) if i != j)
    assert barlow_twins_loss(z1, z2, 0.005, 8, 1).item() == pytest.approx(expected.item(), rel=1e-12)
    assert [type(m) for m in projector(16, "32-8")] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]


def test_small_cifar_resnets_train_in_channels_last_at_any_input_size():
    """torch 2.15's oneDNN 1×1 stride-2 convolution corrupts the heap in its channels_last backward with few
    channels (8 → 16 at 96 px died with `double free or corruption` on this repository's AVX2 CPU): the CIFAR
    ResNets' shortcut computes it as a stride-1 convolution of every other pixel. Run in a child process, so
    a heap corruption fails this test instead of killing the suite."""
    import subprocess
    import sys

    script = ("import torch; from trainables.models import build_model; torch.set_num_threads(2)\n"
              "for width, px in ((4, 32), (8, 64), (8, 96), (12, 160)):\n"
              "    m = build_model('resnet8', 10, px, width=width).to(memory_format=torch.channels_last)\n"
              "    x = torch.randn(64, 3, px, px).contiguous(memory_format=torch.channels_last)\n"
              "    m(x).sum().backward(); m(x).sum().backward()\n"
              "print('trained')")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "trained", done.stderr[-2000:]


def test_the_subsampled_shortcut_is_the_strided_convolution():
    import copy

    from torch import nn

    from trainables.models import SubsampledConv2d

    torch.manual_seed(0)
    plain = nn.Conv2d(8, 16, 1, 2, bias=False)
    ours = SubsampledConv2d(8, 16, 1, 2, bias=False)
    ours.load_state_dict(copy.deepcopy(plain.state_dict()))
    x = torch.randn(4, 8, 9, 9)
    assert torch.allclose(plain(x), ours(x), atol=1e-6) and ours(x).shape == (4, 16, 5, 5)
