"""Models: the small CIFAR ResNets (resnet8/14/20, written out here) and every torchvision classifier by name.

`build_model(name, ...)` builds any name of `torchvision.models.list_models(module=torchvision.models)` through
`torchvision.models.get_model(name, weights=None, num_classes=...)`. Inputs smaller than 64×64 give ResNets and
EfficientNets the CIFAR stem (3×3 stride-1 convolution, no max-pool); ViT and MaxViT are built for the input size;
every other model is left as torchvision builds it, so a few need larger inputs (inception_v3 ≥ 75 px, alexnet
≥ 63 px, maxvit_t a size whose block grids divide by 7). `init` re-initialises conv/linear weights as the TVLARS
paper does (`kaiming_uniform`), with `xavier_uniform`, or leaves torchvision's default.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import typing

import torch
from torch import nn

INITS = ("kaiming_uniform", "xavier_uniform", "default")
# Small CIFAR ResNets (He et al. 2016, §4.2): 3 stages of BasicBlocks, widths w, 2w, 4w.
_CIFAR_RESNETS = {"resnet8": 1, "resnet14": 2, "resnet20": 3}
# The built-in CPU models and a few torchvision ones; any torchvision classifier is accepted (`check_model`).
_LIST_COMMAND = 'python -c "import torchvision; print(torchvision.models.list_models(module=torchvision.models))"'
MODELS_HINT = f"models: {', '.join(_CIFAR_RESNETS)} (CIFAR ResNets) or any torchvision classifier: {_LIST_COMMAND}"


class BasicBlock(nn.Module):
    """The ResNet basic block, as torchvision's (same layer names and order).

    Written out because importing torchvision pulls in torch._dynamo — about 7 s of CPU in every
    fresh Ray worker process on a 2-core machine, i.e. per trial — and the small CPU models need
    nothing else from it. torchvision is imported only when one of its models is asked for.
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class SubsampledConv2d(nn.Conv2d):
    """A 1×1 convolution of stride s computed as a stride-1 one on every s-th pixel (identical: a 1×1 kernel
    without padding reads only those), the same parameters and state dict as `nn.Conv2d(…, 1, s)`.

    Written out because torch 2.15's oneDNN 1×1 stride-2 convolution corrupts the heap in its channels_last
    backward with few channels on CPUs without AVX-512 (measured on this repository's AMD EPYC, AVX2, batch 64:
    8 → 16 channels at ≥ 56 px and 12 → 24 at ≥ 80 px die with `double free or corruption`; this form runs).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        step_h, step_w = self.stride
        return nn.functional.conv2d(x[:, :, ::step_h, ::step_w], self.weight, self.bias)


class CifarResNet(nn.Module):
    """He et al.'s 6n+2-layer CIFAR ResNet.

    Hand-assembled because torchvision's ResNet class always has four 64-based stages; the CPU
    budget needs the three-stage, 16-wide original.
    """

    def __init__(self, blocks_per_stage: int, width: int = 16, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        channels = width
        for stage in range(3):
            out = width * 2**stage
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                shortcut = None
                if stride != 1 or channels != out:
                    shortcut = nn.Sequential(SubsampledConv2d(channels, out, 1, stride, bias=False), nn.BatchNorm2d(out))
                layers.append(BasicBlock(channels, out, stride, shortcut))
                channels = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _cifar_stem(model: nn.Module) -> None:
    """Keep small inputs' resolution in the stem: 3×3 stride-1 first convolution and no max-pool (ResNets),
    stride-1 first convolution (EfficientNets); other models are left as they are."""
    from torchvision.models import EfficientNet, ResNet

    if isinstance(model, ResNet):
        model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    elif isinstance(model, EfficientNet):
        model.features[0][0].stride = (1, 1)


def initialize(model: nn.Module, init: str) -> None:
    if init not in INITS:
        raise ValueError(f"init: unknown {init!r}; choose one of {', '.join(INITS)}")
    if init == "default":
        return
    fill = nn.init.kaiming_uniform_ if init == "kaiming_uniform" else nn.init.xavier_uniform_
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if init == "kaiming_uniform":
                fill(m.weight, nonlinearity="relu")
            else:
                fill(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def torchvision_models() -> list[str]:
    """Every classifier name of `torchvision.models` (not detection, segmentation, video or quantized ones)."""
    import torchvision.models

    return torchvision.models.list_models(module=torchvision.models)


def check_model(name: str) -> None:
    """Raise ValueError naming the closest valid names unless `name` is a model `build_model` knows."""
    if name in _CIFAR_RESNETS:  # answered without importing torchvision (seconds per fresh Ray worker)
        return
    names = [*_CIFAR_RESNETS, *torchvision_models()]
    if name not in names:
        closest = difflib.get_close_matches(str(name), names, n=3, cutoff=0.0)
        raise ValueError(f"model: unknown {name!r}; closest: {', '.join(closest)}; list them with: {_LIST_COMMAND}")


@functools.cache  # a study checks each variant at two corners of its space: ~0.3-1.2 s a torchvision model here
def check_model_fits(name: str, image_size: int, backbone: bool = False) -> None:
    """Raise ValueError unless `name`, built for `image_size`-pixel inputs, takes them (AlexNet and Inception-v3 pool
    CIFAR's 32 pixels below one, ViT-H/14's patches and MaxViT's windows do not divide them: every trial then failed
    at its start) and, as a `backbone` (Barlow Twins), has a Linear head to take off. Built and run on the meta
    device: shapes only, no memory, no arithmetic."""
    if name in _CIFAR_RESNETS:
        return
    try:
        with torch.device("meta"):
            model = build_model(name, 2, image_size)
            model(torch.empty(2, 3, image_size, image_size))
    except NotImplementedError:  # RegNet computes its widths with tensors, which meta ones cannot give: unchecked
        return
    except (RuntimeError, ValueError, AssertionError) as err:  # conv/pool arithmetic, ViT's patches, MaxViT's windows
        raise ValueError(f"model: {name} does not take {image_size}×{image_size} images ({str(err).splitlines()[0]});"
                         " choose another model (resnet8/14/20 and torchvision's ResNets are built for small images)"
                         + (", or larger images: --set image_size=N" if image_size >= 64 else "")) from None
    if backbone:
        _final_linear(model)


def _builder_kwargs(name: str, image_size: int) -> dict[str, typing.Any]:
    """Extra constructor arguments `name`'s model class takes (read from its builder's return type) that
    training needs: the input size (ViT, MaxViT), plain logits in training (no auxiliary heads), and
    torchvision's own initialisation chosen explicitly (GoogLeNet/Inception warn when it is left unset)."""
    import torchvision.models

    cls = typing.get_type_hints(torchvision.models.get_model_builder(name)).get("return")
    accepted = set(inspect.signature(cls.__init__).parameters) if inspect.isclass(cls) else set()
    wanted = {"image_size": image_size, "input_size": (image_size, image_size), "aux_logits": False,
              "init_weights": True}
    return {key: value for key, value in wanted.items() if key in accepted}


def build_model(name: str, num_classes: int, image_size: int, *, init: str = "kaiming_uniform",
                width: int | None = None) -> nn.Module:
    """A classifier for `image_size`×`image_size` RGB inputs; `width` sets the small ResNets' base width."""
    check_model(name)
    if name in _CIFAR_RESNETS:
        model = CifarResNet(_CIFAR_RESNETS[name], width or 16, num_classes)
    else:
        import torchvision.models

        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes,
                                             **_builder_kwargs(name, image_size))
        if image_size < 64:
            _cifar_stem(model)
    initialize(model, init)
    return model


class _GhostBatchNorm:
    """BatchNorm over groups of `group` samples (ghost batch norm; Hoffer et al. 2017) in training.

    Each group is normalised by its own statistics and updates the running statistics in turn, exactly
    as BatchNorm over consecutive micro-batches of `group` samples does — so a batch at `bn_group=m`
    trains like the same batch split into micro-batches of m. Evaluation and batches of at most `group`
    samples (e.g. CLARS' per-sample gradients) are plain BatchNorm.
    """

    group: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] <= self.group:
            return super().forward(x)
        if x.shape[0] % self.group:
            raise ValueError(f"bn_group: {self.group} does not divide a batch of {x.shape[0]} samples")
        # one BatchNorm call per group (not a reshaped single call): the running statistics must see the
        # groups one after another, as consecutive micro-batches do, for the two to train alike
        return torch.cat([super(_GhostBatchNorm, self).forward(chunk) for chunk in x.split(self.group)])


class GhostBatchNorm1d(_GhostBatchNorm, nn.BatchNorm1d):
    pass


class GhostBatchNorm2d(_GhostBatchNorm, nn.BatchNorm2d):
    pass


_GHOSTS = {nn.BatchNorm1d: GhostBatchNorm1d, nn.BatchNorm2d: GhostBatchNorm2d}


def set_bn_group(model: nn.Module, group: int) -> nn.Module:
    """Make every BatchNorm layer of `model` normalise over groups of `group` samples (in place).

    The layers change class rather than being rebuilt, so parameter names, state dicts and the
    optimizer's view of the parameters stay the same.
    """
    for module in model.modules():
        ghost = _GHOSTS.get(type(module)) or (type(module) if isinstance(module, _GhostBatchNorm) else None)
        if ghost is not None:
            module.__class__ = ghost
            module.group = group
    return model


def _final_linear(model: nn.Module) -> tuple[nn.Module, str]:
    """(parent module, attribute name) of the classifier's last Linear: the last one registered."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ValueError(f"model: {type(model).__name__} has no Linear classifier head for Barlow Twins to replace by "
                         "its projector; choose another model")
    parent, _, attribute = names[-1].rpartition(".")
    return model.get_submodule(parent), attribute


def split_head(model: nn.Module) -> tuple[nn.Module, int]:
    """Replace the classifier head by identity; return (backbone, feature dimension).

    The head is the last Linear (`fc`, `classifier`, `classifier[-1]`, `heads.head`, `head`) together with the
    Dropout right before it in its Sequential: the features feed another head, not this one's dropout.
    Whatever precedes them in the classifier (ConvNeXt's norm, MobileNetV3's hidden layer) stays in the backbone.
    """
    parent, attribute = _final_linear(model)
    dim = getattr(parent, attribute).in_features
    setattr(parent, attribute, nn.Identity())
    if isinstance(parent, nn.Sequential):
        before = list(parent._modules)[:list(parent._modules).index(attribute)]
        for key in reversed(before):  # ViT's `heads` names its entries, so go by name, not index
            if not isinstance(parent._modules[key], nn.Dropout):
                break
            setattr(parent, key, nn.Identity())
    return model, dim
