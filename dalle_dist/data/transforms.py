"""Image conversions with Pillow and NumPy (no torchvision)."""

from __future__ import annotations

import math
import os
import random
import textwrap

import numpy as np
import torch
from PIL import Image, ImageOps
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


def label_image(image: Image.Image, text: str, min_width: int = 256) -> Image.Image:
    """``image`` under a white strip holding ``text`` (wrapped), enlarged by a whole factor (nearest
    neighbour: pixels stay sharp) to at least ``min_width`` so the words fit and stay readable."""
    from PIL import ImageDraw, ImageFont

    scale = max(1, math.ceil(min_width / image.width))
    image = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.NEAREST)
    font = ImageFont.load_default()
    char_w = max(1, round(font.getlength("x")))
    lines = textwrap.wrap(text, width=max(8, (image.width - 8) // char_w)) or [""]
    line_h = font.getbbox("Ag")[3] + 4
    labelled = Image.new("RGB", (image.width, image.height + line_h * len(lines) + 8), "white")
    draw = ImageDraw.Draw(labelled)
    for i, line in enumerate(lines):
        draw.text((4, 4 + i * line_h), line, fill="black", font=font)
    labelled.paste(image, (0, line_h * len(lines) + 8))
    return labelled


def pil_to_tensor(img: Image.Image) -> Tensor:
    """A PIL image as a float ``[C, H, W]`` tensor in [0, 1]; "L" keeps one channel, other modes RGB."""
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    array = np.asarray(img, dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = array[..., None]
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _flatten_alpha(img: Image.Image) -> Image.Image:
    """RGB, with transparent areas on white (a plain ``convert("RGB")`` shows whatever colour hides there)."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(
    path: str | os.PathLike, image_size: int, resize_ratio: float = 0.75, rng: random.Random | None = None
) -> Tensor:
    """Read an image file as a ``[3, image_size, image_size]`` float tensor in [0, 1].

    With ``rng`` (training) a random square crop covering a fraction in ``[resize_ratio, 1]`` of the largest
    centred square's area is taken at a random position; with ``rng=None`` (evaluation) the largest centred
    square. The crop is then resized (bicubic, antialiased when shrinking).
    """
    if not 0 < resize_ratio <= 1:
        raise ValueError(f"resize_ratio must be in (0, 1], got {resize_ratio}")
    with Image.open(path) as img:
        # JPEG can decode at 1/2, 1/4, 1/8 scale: much faster for big photos and still >= 2x the output
        img.draft("RGB", (2 * image_size, 2 * image_size))
        img = ImageOps.exif_transpose(img)
        img = _flatten_alpha(img)
    width, height = img.size
    side = min(width, height)
    if rng is None:
        crop = float(side)
        left, top = (width - crop) / 2, (height - crop) / 2
    else:
        crop = side * math.sqrt(rng.uniform(resize_ratio, 1.0))
        left, top = rng.uniform(0, width - crop), rng.uniform(0, height - crop)
    img = img.resize(
        (image_size, image_size), Image.Resampling.BICUBIC, box=(left, top, left + crop, top + crop)
    )
    return pil_to_tensor(img)
