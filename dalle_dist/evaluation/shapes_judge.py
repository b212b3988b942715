"""A rule-based judge for the shapes world: which colour and shape does a (generated) picture show?

It scores the demo without a trained classifier, so it cannot share a model's blind spots:

1. background: the median of the border pixels (a shape covers at most ~30 % of the border ring);
2. foreground: pixels of a 3x3-smoothed copy far from that background (the threshold follows the noise
   measured on the border), split into 8-connected components; specks are ignored, and ``single`` says
   whether exactly one sizeable component is left;
3. colour: the median of the component's core pixels (those nearly as far from the background as any,
   so anti-aliased edges do not pull it towards the background), nearest palette colour in RGB. RGB rather
   than a perceptual space because the errors we judge are roughly isotropic in RGB (decoders trained
   with MSE on RGB, Gaussian pixel noise), where nearest-neighbour is the maximum-likelihood choice;
4. shape: soft coverage ``alpha`` (each pixel's position between background and shape colour, so
   anti-aliasing and blur give sub-pixel areas) is compared with a square, a circle and an upright
   triangle of the same area, centroid and aspect; the smallest residual wins. Unlike thresholds on the
   bounding box's fill ratio (1, pi/4, 1/2), which a one-pixel error in the box moves by 15-30 % on a
   7-pixel shape, this uses every pixel.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..data.synthetic import BACKGROUNDS, COLORS, SHAPES

MAX_SIDE = 128  # larger pictures are box-filtered down first: plenty of pixels, less noise, fast
MIN_THRESHOLD = 30.0  # RGB distance from the background that counts as foreground (purple/gray: 93)
# components smaller than this share of the image are specks: the smallest shape's component is >= 0.02
# (a 20 % triangle), grain from sigma = 0.1 pixel noise stays <= 0.003
SPECK_FRACTION = 0.008
COLOR_TOLERANCE = 60.0  # farther than this from every palette colour: no colour (yellow/orange: 76)
BACKGROUND_TOLERANCE = 40.0
MIN_PURITY = 0.6  # share of core pixels that must agree with the chosen colour
MAX_MISFIT = 0.2  # worse fits than this (per unit area, noise discounted): no shape
_SAMPLES = 4  # template samples per pixel side
_BLURS = (0.0, 0.5, 1.0, 1.5)  # Gaussian sigmas (pixels) tried on each template

_COLOR_NAMES = tuple(COLORS)
_PALETTE = np.array([COLORS[c] for c in _COLOR_NAMES], dtype=np.float64)
_BG_NAMES = tuple(BACKGROUNDS)
_BG_PALETTE = np.array([BACKGROUNDS[b] for b in _BG_NAMES], dtype=np.float64)


@dataclass
class JudgeResult:
    """What the judge saw; ``None`` where it could not tell. ``features`` holds the measurements."""

    color: str | None
    shape: str | None
    background: str | None
    single: bool
    confidence: float = 0.0  # 0..1: 1 - best residual / runner-up residual (0 = a toss-up)
    features: dict[str, float] = field(default_factory=dict)


def _as_rgb_array(image: Image.Image | torch.Tensor) -> np.ndarray:
    """``[H, W, 3]`` float64 in 0..255, at most ``MAX_SIDE`` pixels a side."""
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an image tensor [3, H, W], got {tuple(image.shape)}")
        # NumPy rather than torch ops: for one small picture torch's per-op overhead dominates
        array = (
            np.clip(image.detach().cpu().float().numpy().transpose(1, 2, 0), 0, 1).astype(np.float64) * 255
        )
        if max(array.shape[:2]) <= MAX_SIDE:
            return array
        image = Image.fromarray(np.round(array).astype(np.uint8))
    image = image.convert("RGB")
    if max(image.size) > MAX_SIDE:
        scale = MAX_SIDE / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BOX)
    return np.asarray(image, dtype=np.float64)


def _dilate(mask: np.ndarray) -> np.ndarray:
    """One step of 8-neighbour dilation."""
    padded = np.pad(mask, 1)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy : dy + h, dx : dx + w]
    return out


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected labels (-1 = background, else 0..n-1) and the pixel count of each label."""
    h, w = mask.shape
    big = h * w
    labels = np.where(mask, np.arange(big).reshape(h, w), big)
    while True:
        # each pixel takes the smallest label around it, then jumps along labels (pointer jumping)
        padded = np.pad(labels, 1, constant_values=big)
        low = labels.copy()
        for dy in range(3):
            for dx in range(3):
                np.minimum(low, padded[dy : dy + h, dx : dx + w], out=low)
        low = np.where(mask, low, big)
        flat = np.append(low.ravel(), big)
        low = np.where(mask, flat[low], big)
        if np.array_equal(low, labels):
            break
        labels = low
    _, inverse, counts = np.unique(labels[mask], return_inverse=True, return_counts=True)
    out = np.full((h, w), -1)
    out[mask] = inverse
    return out, counts


def _nearest(value: np.ndarray, palette: np.ndarray) -> tuple[int, float]:
    distances = np.linalg.norm(palette - value, axis=-1)
    index = int(distances.argmin())
    return index, float(distances[index])


def _box3(array: np.ndarray) -> np.ndarray:
    """3x3 mean filter (edges replicated): a third of the noise, for segmentation only."""
    h, w = array.shape[:2]
    padded = np.pad(array, ((1, 1), (1, 1)) + ((0, 0),) * (array.ndim - 2), mode="edge")
    return sum(padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / 9


def _template(shape: str, cx: float, cy: float, w: float, h: float, ys: np.ndarray, xs: np.ndarray):
    """Coverage (0/1) of an axis-aligned shape centred (centroid) at ``cx, cy`` at sample points."""
    if shape == "square":
        return (np.abs(xs - cx) <= w / 2) & (np.abs(ys - cy) <= h / 2)
    if shape == "circle":
        return ((xs - cx) / (w / 2)) ** 2 + ((ys - cy) / (h / 2)) ** 2 <= 1
    along = (ys - (cy - 2 * h / 3)) / h  # 0 at the apex, 1 at the base; the centroid is 2/3 down
    return (along >= 0) & (along <= 1) & (np.abs(xs - cx) <= along * w / 2)


# area over bounding box; width / height over sqrt(mu20 / mu02) (a triangle's mu20 = w^2/24, mu02 = h^2/18)
_FILL = {"square": 1.0, "circle": math.pi / 4, "triangle": 0.5}
_MOMENT_ASPECT = {"square": 1.0, "circle": 1.0, "triangle": math.sqrt(24 / 18)}


def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """``[n, n]`` Gaussian blur along one axis (zero outside), as a matrix: windows are small."""
    offsets = np.arange(n)[:, None] - np.arange(n)[None, :]
    if sigma == 0:
        return (offsets == 0).astype(np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum(axis=1, keepdims=True).max()


def _fit_shapes(alpha: np.ndarray, region: np.ndarray, noise_var: float) -> dict[str, float]:
    """Misfit of a square, a circle and a triangle: the residual sum of squares over the window minus
    what pixel noise (variance ``noise_var`` of alpha) explains, per unit of shape area.

    Each candidate gets the measured area, centroid and aspect (first and second moments of ``alpha``),
    is rendered with 4x4 samples per pixel, blurred by each of ``_BLURS`` (decoders and resizing soften
    edges: a blurred small square is otherwise closer to a sharp circle) and compared with ``alpha``.
    With Gaussian pixel noise the smallest residual is the most likely shape; every pixel votes.
    """
    rows, cols = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    observed = np.clip(alpha[y0:y1, x0:x1], -0.5, 1.5)
    weights = np.where(region[y0:y1, x0:x1], observed, 0.0)
    area = float(weights.sum())
    if area <= 1.0:
        return {}
    yy, xx = np.mgrid[y0:y1, x0:x1] + 0.5
    cx, cy = (weights * xx).sum() / area, (weights * yy).sum() / area
    mu20 = max(float((weights * (xx - cx) ** 2).sum() / area), 1e-3)
    mu02 = max(float((weights * (yy - cy) ** 2).sum() / area), 1e-3)
    offsets = (np.arange(_SAMPLES) + 0.5) / _SAMPLES
    ys = (np.arange(y0, y1)[:, None] + offsets).reshape(-1)
    xs = (np.arange(x0, x1)[:, None] + offsets).reshape(-1)
    ys, xs = np.meshgrid(ys, xs, indexing="ij")
    blurs = [(_blur_matrix(y1 - y0, b), _blur_matrix(x1 - x0, b)) for b in _BLURS]
    expected = noise_var * observed.size
    misfits = {}
    for shape in SHAPES:
        aspect = float(np.clip(math.sqrt(mu20 / mu02) * _MOMENT_ASPECT[shape], 0.5, 2.0))
        height = math.sqrt(area / (_FILL[shape] * aspect))
        coverage = _template(shape, cx, cy, aspect * height, height, ys, xs)
        coverage = coverage.reshape(y1 - y0, _SAMPLES, x1 - x0, _SAMPLES).mean(axis=(1, 3))
        sse = min(float(((observed - by @ coverage @ bx.T) ** 2).sum()) for by, bx in blurs)
        misfits[shape] = (sse - expected) / area
    return misfits


@dataclass
class _Segments:
    """A picture split into background and 8-connected foreground components."""

    rgb: np.ndarray
    border: np.ndarray  # the border ring's pixels
    bg: np.ndarray  # the background colour
    background: str | None
    smooth: np.ndarray  # each pixel's 3x3-smoothed distance from the background
    labels: np.ndarray
    counts: np.ndarray
    sizeable: list[int]  # labels of the components that are not specks, largest first
    features: dict[str, float]


def _segment(image: Image.Image | torch.Tensor) -> _Segments:
    rgb = _as_rgb_array(image)
    h, w, _ = rgb.shape
    if min(h, w) < 4:
        raise ValueError(f"image is {w}x{h}: the judge needs at least 4x4 pixels")
    border = np.concatenate([rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]])
    bg = np.median(border, axis=0)
    bg_index, bg_distance = _nearest(bg, _BG_PALETTE)
    background = _BG_NAMES[bg_index] if bg_distance <= BACKGROUND_TOLERANCE else None

    # segment on a smoothed copy: noise that would cut a faint shape into pieces or add specks is averaged
    smooth = np.linalg.norm(_box3(rgb) - bg, axis=-1)
    noise = float(np.median(np.concatenate([smooth[0], smooth[-1], smooth[:, 0], smooth[:, -1]])))
    threshold = max(MIN_THRESHOLD, 3 * noise)
    features: dict[str, float] = {"threshold": threshold, "background_distance": bg_distance}
    labels, counts = _components(smooth > threshold)
    min_count = max(2.0, SPECK_FRACTION * h * w)
    sizeable = [int(k) for k in np.argsort(-counts, kind="stable") if counts[k] >= min_count]
    return _Segments(rgb, border, bg, background, smooth, labels, counts, sizeable, features)


def _judge_component(seg: _Segments, label: int) -> JudgeResult:
    """Colour and shape of one component; ``single`` says whether it is the picture's only sizeable one."""
    rgb, bg, (h, w) = seg.rgb, seg.bg, seg.labels.shape
    features = dict(seg.features)
    component = seg.labels == label
    features.update(components=float(len(seg.sizeable)), area_fraction=float(seg.counts[label]) / (h * w))

    # core = pixels whose neighbourhood is nearly as far from the background as the component gets: the
    # interior, not the anti-aliased rim whose colours are mixed with the background (most of a small
    # triangle's pixels). Ranking by the smoothed distance keeps the pick independent of each pixel's noise,
    # which would otherwise bias the colour away from the background.
    inside = seg.smooth[component]
    core = rgb[component][inside >= 0.8 * np.percentile(inside, 95)]
    fg = np.median(core, axis=0)
    color_index, color_distance = _nearest(fg, _PALETTE)
    per_pixel = np.linalg.norm(core[:, None, :] - _PALETTE[None], axis=-1).argmin(1)
    purity = float((per_pixel == color_index).mean())
    features.update(color_distance=color_distance, purity=purity)
    color = _COLOR_NAMES[color_index] if color_distance <= COLOR_TOLERANCE and purity >= MIN_PURITY else None

    contrast = fg - bg
    alpha = (rgb - bg) @ contrast / max(float(contrast @ contrast), 1e-6)
    # the other sizeable components (a two-shape picture) are background to this one's fit
    others = np.isin(seg.labels, [k for k in seg.sizeable if k != label])
    if others.any():
        alpha = np.where(_dilate(_dilate(others)), 0.0, alpha)
    # alpha's noise, measured on the border (where the true alpha is 0)
    border_alpha = (seg.border - bg) @ contrast / max(float(contrast @ contrast), 1e-6)
    noise_var = float(np.median(np.abs(border_alpha - np.median(border_alpha))) * 1.4826) ** 2
    misfits = _fit_shapes(alpha, _dilate(_dilate(component)), noise_var)
    single = len(seg.sizeable) == 1
    if not misfits:
        return JudgeResult(color, None, seg.background, single, 0.0, features)
    features.update({f"misfit_{k}": v for k, v in misfits.items()})
    best, second = sorted(SHAPES, key=misfits.get)[:2]
    confidence = (misfits[second] - misfits[best]) / max(misfits[second], 1e-6)
    shape = best if misfits[best] <= MAX_MISFIT else None
    return JudgeResult(color, shape, seg.background, single, confidence, features)


def judge_shape(image: Image.Image | torch.Tensor) -> JudgeResult:
    """Judge one picture (a PIL image, or a ``[3, H, W]`` tensor in [0, 1]) by its largest shape."""
    seg = _segment(image)
    if not seg.sizeable:
        return JudgeResult(None, None, seg.background, False, 0.0, seg.features)
    return _judge_component(seg, seg.sizeable[0])


def judge_shapes(image: Image.Image | torch.Tensor) -> list[JudgeResult]:
    """Judge every shape of a picture (``--shapes two`` data), largest first; none for a blank one."""
    seg = _segment(image)
    return [_judge_component(seg, label) for label in seg.sizeable]


_WORD = re.compile(r"[a-z]+")


def parse_pairs(caption: str) -> tuple[list[tuple[str, str]], str | None]:
    """The ``(color, shape)`` pairs a caption of the shapes grammar names, in order (one, or two joined by
    "and"), and its background or None."""
    words = _WORD.findall(caption.lower())
    named = [w for w in words if w in COLORS or w in SHAPES]
    backgrounds = [w for w in words if w in BACKGROUNDS]
    pairs = list(zip(named[::2], named[1::2], strict=False))  # an odd count is refused below
    well_formed = (
        len(named) % 2 == 0
        and 1 <= len(pairs) <= 2
        and all(c in COLORS and s in SHAPES for c, s in pairs)
        and len(backgrounds) <= 1
    )
    if not well_formed:
        raise ValueError(
            f"caption {caption!r} must name a colour ({', '.join(COLORS)}) then a shape "
            f"({', '.join(SHAPES)}), once or twice, e.g. 'a red circle' or 'a red circle and a blue square'"
        )
    return pairs, backgrounds[0] if backgrounds else None


def parse_caption(caption: str) -> tuple[str, str, str | None]:
    """``(color, shape, background or None)`` named by a one-shape caption in any of the grammar's forms."""
    pairs, background = parse_pairs(caption)
    if len(pairs) != 1:
        raise ValueError(
            f"caption {caption!r} names {len(pairs)} shapes; one is expected, e.g. 'a red circle'"
        )
    return pairs[0][0], pairs[0][1], background


def matches(result: JudgeResult, caption: str, check_background: bool = False) -> bool:
    """Whether the judged picture is a single shape of the caption's colour and shape (and background)."""
    color, shape, background = parse_caption(caption)
    ok = result.single and result.color == color and result.shape == shape
    if check_background and background is not None:
        ok = ok and result.background == background
    return ok


def matches_all(results: list[JudgeResult], caption: str, colours_only: bool = False) -> bool:
    """Whether the judged shapes are exactly those the caption names (in any order), no more, no fewer;
    ``colours_only``: their colours are."""
    pairs, _ = parse_pairs(caption)
    seen = sorted((r.color or "", "" if colours_only else (r.shape or "")) for r in results)
    return seen == sorted((c, "" if colours_only else s) for c, s in pairs)


__all__ = [
    "JudgeResult",
    "judge_shape",
    "judge_shapes",
    "matches",
    "matches_all",
    "parse_caption",
    "parse_pairs",
]
