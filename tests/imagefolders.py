"""Image folders made by tests: JPEGs in ImageFolder / ImageNet layout (`train/<class>/`, `val/<class>/`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_image_folder(root: Path, train: int, val: int, size: int = 32, classes: int = 4, seed: int = 0,
                      prefix: str = "class") -> Path:
    """`train` + `val` JPEGs (size×size, a class-coloured gradient plus noise, so classes are learnable),
    spread over `classes` class folders; returns `root`."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size, dtype=np.float32)[None, :, None]
    for split, count in (("train", train), ("val", val)):
        for i in range(count):
            c = i % classes
            colour = np.array([(c * 97) % 256, (c * 57 + 80) % 256, (c * 31 + 160) % 256], np.float32)
            pixels = colour * (0.5 + 0.5 * ramp) + rng.normal(0, 12, (size, size, 3))
            folder = root / split / f"{prefix}{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{split}_{i:05d}.JPEG", quality=90)
    return root
