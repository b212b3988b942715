"""Image conversions with Pillow and NumPy (no torchvision)."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def to_pil(image: Tensor) -> Image.Image:
    """A ``[C, H, W]`` tensor with values in [0, 1] (clamped) as an RGB or greyscale PIL image."""
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected an image [1 or 3, H, W], got {tuple(image.shape)}")
    array = (image.detach().float().clamp(0, 1).cpu() * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def image_grid(images: Tensor, nrow: int | None = None, padding: int = 2) -> Image.Image:
    """Tile ``[B, C, H, W]`` images (values in [0, 1]) into one picture, ``nrow`` per row."""
    b, _, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    rows = math.ceil(b / nrow)
    grid = np.full((rows * (h + padding) + padding, nrow * (w + padding) + padding, 3), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        tile = np.asarray(to_pil(image).convert("RGB"))
        r, c = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + c * (w + padding)
        grid[y : y + h, x : x + w] = tile
    return Image.fromarray(grid)
