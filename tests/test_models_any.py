"""Any torchvision classifier by name: built for small inputs, one training step with every optimizer, the
LARS family's exclusions decided per parameter, and unknown names answered with the closest ones."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from optim import build_optimizer, microbatch_grad_norms
from optim.clars import CLARS
from optim.exclusions import excluded_names
from optim.factory import SPECS, optimizer_hparams
from optim.layerwise import LayerwiseOptimizer
from trainables.models import MODELS_HINT, build_model, check_model, check_model_fits, split_head

ROOT = Path(__file__).resolve().parents[1]
SIZE, BATCH, CLASSES = 32, 4, 10
LR, WD, ETA = 0.01, 0.1, 0.001
TRAINED = ("resnet50", "densenet121", "mobilenet_v2", "efficientnet_b0", "vit_b_16")
FEATURES = {"resnet50": 2048, "densenet121": 1024, "mobilenet_v2": 1280, "efficientnet_b0": 1280, "vit_b_16": 768}


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    """Each model built once for the module (building ViT-B/16 costs seconds); tests train them in turn."""
    torch.manual_seed(0)
    return {name: build_model(name, CLASSES, SIZE) for name in TRAINED}


def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 3, SIZE, SIZE, generator=gen), torch.randint(0, CLASSES, (BATCH,), generator=gen)


def hparams(name: str) -> dict[str, float]:
    """A small step with weight decay, so that excluded tensors differ visibly from the others."""
    allowed = optimizer_hparams(name)
    return {k: v for k, v in {"lr": LR, "weight_decay": WD, "eta": ETA}.items() if k in allowed}


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """Forward, backward, CLARS' norms (the batch as one micro-batch), step.

    Not 2 micro-batches of 2: BatchNorm over two values a channel (1×1 maps) multiplies a gradient by up to
    1/√eps a layer, and DenseNet-121's micro-batch norms read 2e8 on fresh weights and 1.3e10 after three LARS
    steps (an AMD CI machine), where ρ fell below float32's resolution and 83 of its 364 tensors did not move."""
    model.train()
    x, y = data()
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    if isinstance(optimizer, CLARS):
        optimizer.set_per_sample_grad_norms(model.parameters(), microbatch_grad_norms(model, F.cross_entropy, x, y, 1))
    optimizer.step()
    return loss.detach()


def rounding(w: torch.Tensor) -> float:
    """Absolute error of a float32 step read back as new − old weights (a few ulps of the largest weight)."""
    return 4 * torch.finfo(w.dtype).eps * max(1.0, w.abs().max().item())


def check_lars_update(before: dict[str, torch.Tensor], model: nn.Module, excluded: set[str]) -> None:
    """First LARS step: excluded tensors move by −lr·g exactly; the others by lr·η·‖w‖ (trust ratio)."""
    for name, p in model.named_parameters():
        step = p.detach() - before[name]
        if name in excluded:
            torch.testing.assert_close(step, -LR * p.grad, rtol=1e-4, atol=rounding(before[name]))
        else:
            assert step.norm().item() == pytest.approx(LR * ETA * before[name].norm().item(), rel=1e-3)


def check_sgd_update(before: dict[str, torch.Tensor], model: nn.Module, excluded: set[str]) -> None:
    """First SGD step: excluded tensors move by −lr·g, the others by −lr·(g + wd·w)."""
    for name, p in model.named_parameters():
        decay = 0.0 if name in excluded else WD
        torch.testing.assert_close(p.detach() - before[name], -LR * (p.grad + decay * before[name]),
                                   rtol=1e-4, atol=rounding(before[name]))


@pytest.mark.parametrize("optimizer", list(SPECS))
@pytest.mark.parametrize("model_name", TRAINED)
def test_one_training_step_with_every_optimizer(models, model_name, optimizer):
    model = copy.deepcopy(models[model_name])  # every optimizer steps the same weights, whichever tests ran before
    excluded = excluded_names(model)
    opt = build_optimizer(optimizer, list(model.named_parameters()), exclude=excluded, **hparams(optimizer))
    names = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:  # every tensor's group follows the model's exclusions
        for p in group["params"]:
            is_excluded = names[id(p)] in excluded
            assert group["weight_decay"] == (0.0 if is_excluded else WD)
            if isinstance(opt, LayerwiseOptimizer):
                assert group["adapt"] is not is_excluded
            else:
                assert "adapt" not in group
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = train_step(model, opt)
    assert torch.isfinite(loss)
    # every tensor moves, but for a few whose gradient is zero up to rounding: EfficientNet's residual stream
    # reaches the loss only through convolutions followed by BatchNorm, which subtracts any constant shift, so
    # the shifts of BatchNorms just before a residual sum get ~1e-8 gradients (too small to move them in float32)
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert len(unchanged) <= 0.02 * len(before)
    assert all(LR * model.get_parameter(n).grad.abs().max() < rounding(before[n]) for n in unchanged)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    if optimizer == "lars":
        check_lars_update(before, model, excluded)
    if optimizer == "sgd":
        check_sgd_update(before, model, excluded)


@pytest.mark.parametrize("name, total, excluded, names_in, names_out", [
    ("resnet50", 161, 107, ["bn1.weight", "bn1.bias", "fc.bias", "layer4.2.bn3.weight"],
     ["conv1.weight", "fc.weight", "layer1.0.downsample.0.weight"]),
    ("densenet121", 364, 243, ["features.norm0.weight", "features.denseblock1.denselayer1.norm1.bias",
                               "features.norm5.weight", "classifier.bias"],
     ["features.conv0.weight", "features.denseblock1.denselayer1.conv2.weight", "classifier.weight"]),
    ("mobilenet_v2", 158, 105, ["features.0.1.weight", "features.1.conv.0.1.bias", "classifier.1.bias"],
     ["features.0.0.weight", "features.1.conv.1.weight", "classifier.1.weight"]),
    ("vit_b_16", 152, 102, ["class_token", "encoder.pos_embedding", "encoder.layers.encoder_layer_0.ln_1.weight",
                            "encoder.layers.encoder_layer_0.self_attention.in_proj_bias", "encoder.ln.bias",
                            "conv_proj.bias", "heads.head.bias"],
     ["encoder.layers.encoder_layer_0.self_attention.in_proj_weight",
      "encoder.layers.encoder_layer_0.self_attention.out_proj.weight",
      "encoder.layers.encoder_layer_0.mlp.0.weight", "conv_proj.weight", "heads.head.weight"]),
])
def test_exclusions_are_decided_per_parameter(models, name, total, excluded, names_in, names_out):
    model = models[name]
    chosen = excluded_names(model)
    assert len(dict(model.named_parameters())) == total and len(chosen) == excluded
    assert set(names_in) <= chosen and not set(names_out) & chosen
    one_dimensional = {n for n, p in model.named_parameters() if p.ndim <= 1}
    # BatchNorm/bias models: exactly the ≤1-D tensors as before; ViT adds its class token and position embedding
    extra = {"class_token", "encoder.pos_embedding"} if name == "vit_b_16" else set()
    assert chosen == one_dimensional | extra


@pytest.mark.parametrize("name", ["resnet8", "resnet18", "resnet50", "efficientnet_b0"])
@pytest.mark.parametrize("optimizer", ["lars", "lamb", "sgd"])
def test_named_exclusions_keep_existing_models_groups(models, name, optimizer):
    """For the models the platform had, passing the names builds the very groups the ≤1-D rule built."""
    model = models.get(name) or build_model(name, CLASSES, SIZE)
    named = list(model.named_parameters())
    by_name = build_optimizer(optimizer, named, exclude=excluded_names(model), lr=LR, weight_decay=WD)
    by_shape = build_optimizer(optimizer, named, lr=LR, weight_decay=WD)
    assert by_name.state_dict()["param_groups"] == by_shape.state_dict()["param_groups"]
    assert [[id(p) for p in g["params"]] for g in by_name.param_groups] == \
        [[id(p) for p in g["params"]] for g in by_shape.param_groups]


def test_exclude_needs_the_parameters_names():
    model = build_model("resnet8", CLASSES, SIZE)
    wrapped = {f"module.{n}" for n in excluded_names(model)}  # e.g. names read off a DDP wrapper
    with pytest.raises(ValueError, match="^exclude: not among the parameters' names: module.fc.bias, "):
        build_optimizer("lars", list(model.named_parameters()), exclude=wrapped, lr=LR)
    with pytest.raises(ValueError, match="^exclude: parameter names need"):
        build_optimizer("sgd", list(model.parameters()), exclude=set(), lr=LR)
    off = build_optimizer("lars", list(model.named_parameters()), exclude=excluded_names(model), lr=LR,
                          exclude_1d=False)
    assert len(off.param_groups) == 1 and off.param_groups[0]["adapt"] is True


@pytest.mark.parametrize("name", TRAINED)
def test_split_head_gives_the_features(models, name):
    backbone, dim = split_head(copy.deepcopy(models[name]).eval())
    with torch.no_grad():
        assert dim == FEATURES[name] and backbone(data()[0]).shape == (BATCH, dim)


def test_unknown_model_names_the_closest():
    with pytest.raises(ValueError, match=r"^model: unknown 'resnet5O'; closest: resnet50, ") as error:
        check_model("resnet5O")
    assert "torchvision.models.list_models(module=torchvision.models)" in str(error.value)
    with pytest.raises(ValueError, match=r"^model: unknown 'fasterrcnn_resnet50_fpn'"):  # detection: no classifier
        check_model("fasterrcnn_resnet50_fpn")
    with pytest.raises(ValueError, match=r"^model: unknown 'vit'; closest: "):
        build_model("vit", CLASSES, SIZE)
    assert "list_models" in MODELS_HINT and "\n" not in MODELS_HINT


def test_every_torchvision_classifier_is_accepted():
    names = torchvision.models.list_models(module=torchvision.models)
    assert len(names) >= 80 and {"resnet50", "densenet121", "mobilenet_v2", "vit_b_16", "swin_t"} <= set(names)
    for name in (*names, "resnet8", "resnet14", "resnet20"):
        check_model(name)


def test_cifar_resnets_do_not_import_torchvision():
    code = ("from trainables.models import build_model, check_model; check_model('resnet8'); "
            "build_model('resnet20', 10, 32); import sys; print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name, size, expected", [("vit_b_32", 64, {"image_size": 64}), ("swin_t", 32, {}),
                                                  ("googlenet", 32, {})])
def test_other_families_build_for_small_inputs(name, size, expected):
    """ViT is built for the input size; GoogLeNet without auxiliary heads, so training gives plain logits."""
    model = build_model(name, CLASSES, size).train()
    out = model(torch.randn(2, 3, size, size))
    assert isinstance(out, torch.Tensor) and out.shape == (2, CLASSES)
    assert all(getattr(model, k) == v for k, v in expected.items())


@pytest.mark.parametrize("name, size, backbone, refused", [
    ("alexnet", 32, False, "Output size is too small"),  # pools CIFAR's 32 px below one
    ("inception_v3", 64, False, "Kernel size can't be greater than actual input size"),
    ("vit_h_14", 32, False, "Input shape indivisible by patch size!"),  # raised as an AssertionError
    ("maxvit_t", 32, False, "is not divisible by partition size 7"),  # raised as a ValueError while building
    ("squeezenet1_0", 32, True, "SqueezeNet has no Linear classifier head for Barlow Twins"),
    ("alexnet", 64, False, None),
    ("squeezenet1_0", 32, False, None),  # a classifier without a Linear head is fine
    ("regnet_y_400mf", 32, True, None),  # builds with tensor arithmetic meta tensors cannot do: left unchecked
    ("vit_b_16", 32, True, None),
])
def test_a_model_is_checked_at_its_input_size_before_anything_runs(name, size, backbone, refused):
    """Every one refused here once failed each trial at its first step; every one accepted trains (a sweep of
    torchvision's classifiers at 32 px, one step each)."""
    if refused is None:
        check_model_fits(name, size, backbone)
    else:
        with pytest.raises(ValueError, match=r"^model: ") as err:
            check_model_fits(name, size, backbone)
        assert refused in str(err.value)
