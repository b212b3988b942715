"""The built-in dataset: procedurally drawn, captioned shapes: one filled shape on a plain background, or
with ``shapes=2`` (``--shapes two``) two of them, "a small red square and a large blue circle".

Item ``i`` is a pure function of ``(seed, i, holdout)``, so every process, worker and tool that builds the
same ``ShapesDataset`` sees the same pictures without any file. The caption grammar, palette and geometry
are a fixed spec that other tools (the judge, the demo) rely on.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw
from torch import Tensor

from .batches import IndexedDataset, Ranks
from .config import DataConfig
from .errors import DataError
from .transforms import pil_to_tensor

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 215, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
    "pink": (240, 130, 190),
    "cyan": (40, 200, 210),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# shape extent as a fraction of the image width
SIZES: dict[str, tuple[float, float]] = {"small": (0.20, 0.30), "large": (0.45, 0.60)}
# two shapes share the picture side by side (or one above the other) with a gap that keeps them apart
# after a 3x3 blur (the judge's), so each is smaller
TWO_SIZES: dict[str, tuple[float, float]] = {"small": (0.18, 0.25), "large": (0.32, 0.42)}
TWO_GAP = 0.1  # fraction of the width, at least 2 pixels
SHAPE_COUNTS = {"one": 1, "two": 2}  # --shapes

MIN_IMAGE_SIZE = 8
CAPTION_SAMPLE = 5000  # items whose captions captions() returns
_SUPERSAMPLE = 4  # draw at 4x and box-filter down: anti-aliased edges with exact coverage


@dataclass(frozen=True)
class ShapeAttributes:
    """What one item shows; ``bbox`` is ``(x0, y0, x1, y1)`` in pixels, ``x1``/``y1`` exclusive."""

    size: str
    color: str
    shape: str
    background: str
    bbox: tuple[int, int, int, int]

    def captions(self) -> list[str]:
        """The full caption first, then the two short forms."""
        return [
            f"a {self.size} {self.color} {self.shape} on a {self.background} background",
            f"a {self.color} {self.shape}",
            f"{self.color} {self.shape} on {self.background}",
        ]


@dataclass(frozen=True)
class ShapePair:
    """Two shapes on one background (``--shapes two``): the captions name both, in this order, and not
    where they are."""

    first: ShapeAttributes
    second: ShapeAttributes

    @property
    def background(self) -> str:
        return self.first.background

    @property
    def shapes(self) -> tuple[ShapeAttributes, ShapeAttributes]:
        return self.first, self.second

    def captions(self) -> list[str]:
        """The full caption first, then the two short forms."""
        a, b, bg = self.first, self.second, self.background
        return [
            f"a {a.size} {a.color} {a.shape} and a {b.size} {b.color} {b.shape} on a {bg} background",
            f"a {a.color} {a.shape} and a {b.color} {b.shape}",
            f"{a.color} {a.shape} and {b.color} {b.shape} on {bg}",
        ]


def parse_holdout(spec: Iterable[str] | str) -> tuple[str, ...]:
    """Normalise ``"red triangle, Blue  circle"`` (or an iterable of pairs) to sorted unique "color shape"."""
    entries = spec.split(",") if isinstance(spec, str) else list(spec)
    pairs = set()
    for entry in entries:
        words = str(entry).lower().split()
        if not words:
            continue
        if len(words) != 2 or words[0] not in COLORS or words[1] not in SHAPES:
            raise ValueError(
                f"holdout entry {entry!r} is not a 'color shape' pair; colours: {', '.join(COLORS)}; "
                f"shapes: {', '.join(SHAPES)} (e.g. 'red triangle,blue circle')"
            )
        pairs.add(f"{words[0]} {words[1]}")
    if len(pairs) == len(COLORS) * len(SHAPES):
        raise ValueError("holdout names every colour-shape pair: nothing would be left to draw")
    return tuple(sorted(pairs))


def _extent_range(
    size: str, image_size: int, sizes: dict[str, tuple[float, float]] = SIZES
) -> tuple[int, int]:
    """Whole-pixel extents whose fraction of the width lies inside the size's range."""
    lo_frac, hi_frac = sizes[size]
    lo, hi = math.ceil(lo_frac * image_size - 1e-9), math.floor(hi_frac * image_size + 1e-9)
    if lo > hi:  # tiny images: no whole pixel count fits, take the middle
        lo = hi = round((lo_frac + hi_frac) / 2 * image_size)
    return max(lo, 2), max(hi, 2)


def render(attrs: ShapeAttributes | ShapePair, image_size: int) -> Image.Image:
    """Draw ``attrs`` (bboxes in pixels of an ``image_size`` picture) as an RGB image."""
    shapes = attrs.shapes if isinstance(attrs, ShapePair) else (attrs,)
    s = _SUPERSAMPLE
    canvas = Image.new("RGB", (image_size * s, image_size * s), BACKGROUNDS[attrs.background])
    draw = ImageDraw.Draw(canvas)
    for shape in shapes:
        _draw(draw, shape, image_size)
    return canvas.resize((image_size, image_size), Image.Resampling.BOX)


def _draw(draw: ImageDraw.ImageDraw, attrs: ShapeAttributes, image_size: int) -> None:
    x0, y0, x1, y1 = attrs.bbox
    if not (0 <= x0 < x1 <= image_size and 0 <= y0 < y1 <= image_size):
        raise ValueError(f"bbox {attrs.bbox} does not fit in a {image_size}x{image_size} image")
    s = _SUPERSAMPLE
    color = COLORS[attrs.color]
    # Pillow's boxes include their last pixel, hence the -1
    left, top, right, bottom = x0 * s, y0 * s, x1 * s - 1, y1 * s - 1
    if attrs.shape == "square":
        draw.rectangle((left, top, right, bottom), fill=color)
    elif attrs.shape == "circle":
        draw.ellipse((left, top, right, bottom), fill=color)
    elif attrs.shape == "triangle":
        draw.polygon([((left + right) / 2, top), (right, bottom), (left, bottom)], fill=color)
    else:
        raise ValueError(f"unknown shape {attrs.shape!r}; shapes: {', '.join(SHAPES)}")


class ShapesDataset(IndexedDataset):
    """Captioned shapes: ``dataset[i] -> (image [3, image_size, image_size] in [0, 1], 3 captions)``.
    ``shapes`` per picture: 1, or 2 (two different colour-shape pairs, neither of them held out)."""

    def __init__(
        self,
        image_size: int = 32,
        length: int = 20000,
        seed: int = 0,
        holdout: Iterable[str] | str = (),
        shapes: int = 1,
    ) -> None:
        if image_size < MIN_IMAGE_SIZE:
            raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}")
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        if shapes not in SHAPE_COUNTS.values():
            raise ValueError(f"shapes per picture must be 1 or 2, got {shapes}")
        self.image_size = image_size
        self.length = length
        self.seed = seed
        self.shapes = shapes
        self.holdout = parse_holdout(holdout)
        held = set(self.holdout)
        self._pairs = [(c, s) for c in COLORS for s in SHAPES if f"{c} {s}" not in held]
        if len(self._pairs) < shapes:
            raise ValueError(f"the holdout leaves {len(self._pairs)} colour-shape pair; two shapes need two")

    @classmethod
    def from_config(cls, config: DataConfig, ranks: Ranks) -> ShapesDataset:
        """The built-in dataset of a ``DataConfig`` (drawn on demand: nothing to read)."""
        try:
            return cls(config.image_size, config.dataset_size, config.seed, config.holdout, config.shapes)
        except ValueError as e:
            raise DataError(f"--holdout / --image_size / --shapes: {e}") from None

    def __len__(self) -> int:
        return self.length

    def _index(self, i: int) -> int:
        if not -self.length <= i < self.length:
            raise IndexError(f"index {i} out of range for {self.length} items")
        return i % self.length

    def attributes(self, i: int) -> ShapeAttributes | ShapePair:
        """What item ``i`` shows, without drawing it."""
        i = self._index(i)
        if self.shapes == 2:
            return self._pair(random.Random(f"two-shapes/{self.seed}/{i}"))
        # a string seed is hashed with SHA-512 by `random`: stable across runs and Python versions
        rng = random.Random(f"shapes/{self.seed}/{i}")
        size = rng.choice(tuple(SIZES))
        background = rng.choice(tuple(BACKGROUNDS))
        # drawing from the allowed pairs keeps colours and shapes uniform among what is left
        color, shape = rng.choice(self._pairs)
        extent = rng.randint(*_extent_range(size, self.image_size))
        x0 = rng.randint(0, self.image_size - extent)
        y0 = rng.randint(0, self.image_size - extent)
        return ShapeAttributes(size, color, shape, background, (x0, y0, x0 + extent, y0 + extent))

    def _pair(self, rng: random.Random) -> ShapePair:
        """Two different pairs in boxes apart along x or y (which comes first there is random too)."""
        n = self.image_size
        background = rng.choice(tuple(BACKGROUNDS))
        pairs = rng.sample(self._pairs, 2)
        sizes = [rng.choice(tuple(TWO_SIZES)) for _ in pairs]
        extents = [rng.randint(*_extent_range(size, n, TWO_SIZES)) for size in sizes]
        gap = max(2, round(TWO_GAP * n))
        order = [0, 1] if rng.random() < 0.5 else [1, 0]  # which one lies before the other on the axis
        first, second = (extents[k] for k in order)
        along = [0, 0]
        along[order[0]] = rng.randint(0, n - first - second - gap)
        along[order[1]] = rng.randint(along[order[0]] + first + gap, n - second)
        horizontal = rng.random() < 0.5
        shapes = []
        for (color, shape), size, extent, a in zip(pairs, sizes, extents, along, strict=True):
            b = rng.randint(0, n - extent)
            x0, y0 = (a, b) if horizontal else (b, a)
            shapes.append(ShapeAttributes(size, color, shape, background, (x0, y0, x0 + extent, y0 + extent)))
        return ShapePair(*shapes)

    def __getitem__(self, i: int) -> tuple[Tensor, list[str]]:
        attrs = self.attributes(i)
        return pil_to_tensor(render(attrs, self.image_size)), attrs.captions()

    def captions(self) -> list[str]:
        """Captions of the first ``min(len, 5000)`` items (enough to cover the grammar; fast)."""
        return [c for i in range(min(self.length, CAPTION_SAMPLE)) for c in self.attributes(i).captions()]

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable recipe to rebuild this dataset (stored in checkpoints)."""
        return {
            "kind": "shapes",
            "image_size": self.image_size,
            "length": self.length,
            "seed": self.seed,
            "holdout": list(self.holdout),
            "shapes": self.shapes,
        }
