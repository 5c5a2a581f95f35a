"""Models: torchvision ResNet-18/34/50 and EfficientNet-B0, plus small CIFAR ResNets for CPU runs.

Inputs smaller than 64×64 get the CIFAR stem (3×3 stride-1 convolution, no max-pool); larger inputs
keep the standard ImageNet stem. `init` re-initialises conv/linear weights as the TVLARS paper does
(`kaiming_uniform`), with `xavier_uniform`, or leaves torchvision's default.
"""

from __future__ import annotations

import torch
from torch import nn

INITS = ("kaiming_uniform", "xavier_uniform", "default")
_TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50")
# Small CIFAR ResNets (He et al. 2016, §4.2): 3 stages of BasicBlocks, widths w, 2w, 4w.
_CIFAR_RESNETS = {"resnet8": 1, "resnet14": 2, "resnet20": 3}
MODELS = (*_CIFAR_RESNETS, *_TORCHVISION_RESNETS, "efficientnet_b0")


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
                    shortcut = nn.Sequential(nn.Conv2d(channels, out, 1, stride, bias=False), nn.BatchNorm2d(out))
                layers.append(BasicBlock(channels, out, stride, shortcut))
                channels = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _cifar_stem(model: nn.Module) -> None:
    if hasattr(model, "conv1"):  # ResNet
        model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    else:  # EfficientNet: stride-1 first convolution
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


def build_model(name: str, num_classes: int, image_size: int, *, init: str = "kaiming_uniform",
                width: int | None = None) -> nn.Module:
    """A classifier for `image_size`×`image_size` RGB inputs; `width` sets the small ResNets' base width."""
    if name in _CIFAR_RESNETS:
        model = CifarResNet(_CIFAR_RESNETS[name], width or 16, num_classes)
    elif name in _TORCHVISION_RESNETS or name == "efficientnet_b0":
        import torchvision.models

        model = getattr(torchvision.models, name)(num_classes=num_classes)
        if image_size < 64:
            _cifar_stem(model)
    else:
        raise ValueError(f"model: unknown {name!r}; choose one of {', '.join(MODELS)}")
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


def split_head(model: nn.Module) -> tuple[nn.Module, int]:
    """Replace the classifier head by identity; return (backbone, feature dimension)."""
    if isinstance(model, CifarResNet) or hasattr(model, "fc"):
        dim = model.fc.in_features
        model.fc = nn.Identity()
    else:  # EfficientNet
        dim = model.classifier[-1].in_features
        model.classifier = nn.Identity()
    return model, dim
