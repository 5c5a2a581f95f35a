"""Batched tensor augmentation: random parameters are drawn for a whole global batch, then applied.

Drawing parameters separately from applying them lets every worker take its slice of one global draw,
so a run's augmentations do not depend on how many workers share the batch. All operations work on
[B, 3, H, W] tensors on the data's device (torchvision.transforms.v2 draws one parameter set per call,
not per sample, so it cannot augment a batch in one call — hence these few functions).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

Params = dict[str, Tensor]
_LUMA = (0.299, 0.587, 0.114)


def take(params: Params, rows: slice) -> Params:
    """The parameters of the samples in `rows` (a worker's share of the global batch)."""
    return {k: v[rows] for k, v in params.items()}


def epoch_draws(sample: Callable[[int], Params], steps: int, rows: slice, device: torch.device) -> list[Params]:
    """Every step's draws (`sample(step)`, for the global batch) for this worker's `rows`, moved to `device`
    in one copy per epoch, so no step waits on a host-to-device transfer. The values are unchanged."""
    draws = [take(sample(step), rows) for step in range(steps)]
    if not draws:
        return []
    stacked = {k: torch.stack([d[k] for d in draws]).to(device) for k in draws[0]}
    return [{k: v[step] for k, v in stacked.items()} for step in range(steps)]


def normalize(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 (or [0,1] float) images → float32 normalised per channel."""
    x = images.float().div_(255) if images.dtype == torch.uint8 else images
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


# --- classification: pad-and-crop + horizontal flip ----------------------------------------------

def sample_crop_flip(n: int, generator: torch.Generator, pad: int = 4) -> Params:
    return {
        "dy": torch.randint(0, 2 * pad + 1, (n,), generator=generator),
        "dx": torch.randint(0, 2 * pad + 1, (n,), generator=generator),
        "flip": torch.rand(n, generator=generator) < 0.5,
    }


def crop_flip(images: Tensor, params: Params, pad: int = 4) -> Tensor:
    """Zero-pad by `pad`, crop back to H×W at the drawn offsets, flip where drawn; any dtype."""
    b, c, h, w = images.shape
    dev = images.device
    padded = F.pad(images, (pad, pad, pad, pad))
    rows = params["dy"].to(dev)[:, None] + torch.arange(h, device=dev)
    cols = torch.arange(w, device=dev).expand(b, w)
    cols = torch.where(params["flip"].to(dev)[:, None], cols.flip(1), cols) + params["dx"].to(dev)[:, None]
    return padded[torch.arange(b, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


# --- Barlow Twins view: random resized crop, flip, colour jitter, grayscale ----------------------

def sample_view(n: int, generator: torch.Generator, *, scale: tuple[float, float] = (0.2, 1.0),
                jitter_p: float = 0.8, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.2,
                hue: float = 0.1, gray_p: float = 0.2) -> Params:
    """Parameters of one Barlow Twins view per sample (crop scale sized for 32×32 images)."""
    def uniform(lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    area = uniform(*scale)
    log_ratio = uniform(math.log(3 / 4), math.log(4 / 3))
    w = torch.sqrt(area * log_ratio.exp()).clamp(max=1.0)
    h = torch.sqrt(area / log_ratio.exp()).clamp(max=1.0)
    jitter = torch.rand(n, generator=generator) < jitter_p
    return {
        "w": w, "h": h, "cx": uniform(0, 1) * (1 - w) + w / 2, "cy": uniform(0, 1) * (1 - h) + h / 2,
        "flip": torch.rand(n, generator=generator) < 0.5,
        "brightness": torch.where(jitter, uniform(1 - brightness, 1 + brightness), 1.0),
        "contrast": torch.where(jitter, uniform(1 - contrast, 1 + contrast), 1.0),
        "saturation": torch.where(jitter, uniform(1 - saturation, 1 + saturation), 1.0),
        "hue": torch.where(jitter, uniform(-hue, hue), 0.0),
        "gray": torch.rand(n, generator=generator) < gray_p,
    }


def _gray(x: Tensor) -> Tensor:
    r, g, b = _LUMA
    return (r * x[:, 0] + g * x[:, 1] + b * x[:, 2]).unsqueeze(1)


def _rotate_hue(x: Tensor, turns: Tensor) -> Tensor:
    """Hue shift as a rotation of the chroma plane in YIQ space (a linear stand-in for HSV's hue)."""
    to_yiq = x.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    yiq = torch.einsum("ij,bjhw->bihw", to_yiq, x)
    angle = turns.to(x) * 2 * math.pi
    cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], 1)
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(to_yiq), yiq)


def view(images: Tensor, params: Params, size: int) -> Tensor:
    """One augmented view, float in [0, 1], `size`×`size`."""
    x = images.float().div_(255) if images.dtype == torch.uint8 else images
    p = {k: v.to(x.device) for k, v in params.items()}
    b = x.shape[0]
    sign = torch.where(p["flip"], -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = p["w"] * sign
    theta[:, 0, 2] = 2 * p["cx"] - 1
    theta[:, 1, 1] = p["h"]
    theta[:, 1, 2] = 2 * p["cy"] - 1
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    x = (x * p["brightness"].view(-1, 1, 1, 1)).clamp_(0, 1)
    mean = _gray(x).mean((2, 3), keepdim=True)
    x = ((x - mean) * p["contrast"].view(-1, 1, 1, 1) + mean).clamp_(0, 1)
    gray = _gray(x)
    x = ((x - gray) * p["saturation"].view(-1, 1, 1, 1) + gray).clamp_(0, 1)
    x = _rotate_hue(x, p["hue"]).clamp_(0, 1)
    return torch.where(p["gray"].view(-1, 1, 1, 1), _gray(x).expand_as(x), x)
