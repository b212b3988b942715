"""Attention patterns of DALL-E: each one is a single mask function over sequence positions.

The sequence is ``[bos, text_1 .. text_S, image_1 .. image_N]``: ``text_len = S + 1`` text positions (``S``
in a plain GPT's layout, which has no bos) followed by an ``fmap_size x fmap_size`` grid of image positions
in raster order. Every pattern is causal, text
positions attend causally to text only, and image positions attend to all text. Patterns differ only in
which earlier *image* positions an image position may see; that rule is the one thing each pattern defines.

``mask_mod(q, k)`` takes broadcastable integer tensors of absolute positions and returns a bool tensor
(True = may attend), written with element-wise tensor ops only so the same function can drive a dense
mask, a FlexAttention ``BlockMask`` and a cached decode step.

A pattern with parameters declares them as its own ``Options`` dataclass (defaults and checks in one
place), so a new pattern is one class here plus its line in ``PATTERNS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor


@dataclass(frozen=True)
class SequenceLayout:
    """Where text and image positions sit in a DALL-E sequence."""

    text_len: int  # bos + text tokens (text tokens alone in a plain layout)
    fmap_size: int  # side of the image token grid

    @property
    def image_len(self) -> int:
        return self.fmap_size * self.fmap_size

    @property
    def total_len(self) -> int:
        return self.text_len + self.image_len

    def coordinates(self) -> Tensor:
        """Per position ``[total_len, 3]``: (text index, image row, image column), each part's other axes
        held constant (the axes of DALL-E's rotary embedding)."""
        t, f = self.text_len, self.fmap_size
        pos = torch.arange(self.total_len)
        img = (pos - t).clamp(min=0)
        is_img = pos >= t
        text_axis = torch.where(is_img, torch.full_like(pos, t), pos)
        row = torch.where(is_img, img // f, torch.full_like(pos, -1))
        col = torch.where(is_img, img % f, torch.full_like(pos, -1))
        return torch.stack((text_axis, row, col), dim=1)


@dataclass(frozen=True)
class Band:
    """Where an image query's keys can lie, for executors that skip the rest of the sequence.

    Image positions are cut into consecutive groups of ``group`` (in column-major grid order when
    ``column_major``); a group's queries may only see the text, the ``width`` positions (same order) that
    end with the group's last one, and the image positions ``global_keys`` (raster order). Which of those
    they do see is still decided by ``mask_mod`` alone.
    """

    group: int
    width: int
    column_major: bool = False
    global_keys: tuple[int, ...] = ()


@dataclass(frozen=True)
class NoOptions:
    """A pattern without parameters."""


class AttentionPattern:
    """Base class: text is causal, image sees all text, ``image_rule`` decides image -> image."""

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions

    def __init__(self, layout: SequenceLayout, options: Any = None) -> None:
        self.layout = layout
        self.opts = self.Options() if options is None else options

    def image_rule(self, qi: Tensor, ki: Tensor) -> Tensor:
        """May image position ``qi`` see image position ``ki`` (grid indices, ``ki <= qi``)?"""
        raise NotImplementedError

    def mask_mod(self, q: Tensor, k: Tensor) -> Tensor:
        """The pattern: True where absolute position ``q`` may attend to absolute position ``k``."""
        t = self.layout.text_len
        qi, ki = (q - t).clamp(min=0), (k - t).clamp(min=0)
        return (k <= q) & ((k < t) | self.image_rule(qi, ki))

    def dense_mask(self, length: int | None = None, device: torch.device | str | None = None) -> Tensor:
        """The ``[length, length]`` bool mask of the first ``length`` positions."""
        n = self.layout.total_len if length is None else length
        pos = torch.arange(n, device=device)
        return self.mask_mod(pos[:, None], pos[None, :])

    def options(self) -> dict[str, Any]:
        """Parameters beyond the layout, as recorded in checkpoints."""
        return asdict(self.opts)

    def band(self) -> Band | None:
        """The band the image keys lie in (see ``Band``); None: no structure worth exploiting (full)."""
        return None

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


class FullPattern(AttentionPattern):
    """Plain causal attention."""

    name = "full"

    def image_rule(self, qi: Tensor, ki: Tensor) -> Tensor:
        return torch.ones_like(qi + ki, dtype=torch.bool)


class AxialRowPattern(AttentionPattern):
    """Image positions see earlier positions of their own grid row."""

    name = "axial_row"

    def band(self) -> Band:
        f = self.layout.fmap_size
        return Band(group=f, width=f)  # a grid row sees its own row

    def image_rule(self, qi: Tensor, ki: Tensor) -> Tensor:
        f = self.layout.fmap_size
        return torch.div(qi, f, rounding_mode="floor") == torch.div(ki, f, rounding_mode="floor")


class AxialColPattern(AttentionPattern):
    """Image positions see earlier positions of their own grid column."""

    name = "axial_col"

    def band(self) -> Band:
        f = self.layout.fmap_size
        return Band(group=f, width=f, column_major=True)  # a grid column sees its own column

    def image_rule(self, qi: Tensor, ki: Tensor) -> Tensor:
        f = self.layout.fmap_size
        return qi % f == ki % f


class ConvLikePattern(AttentionPattern):
    """Image positions see the earlier part of a ``kernel_size`` square neighbourhood, with dilation."""

    name = "conv_like"

    @dataclass(frozen=True)
    class Options:
        kernel_size: int = 5
        dilation: int = 1

        def __post_init__(self) -> None:
            if self.kernel_size < 1 or self.kernel_size % 2 == 0:
                raise ValueError(f"conv_like kernel_size must be odd and positive, got {self.kernel_size}")
            if self.dilation < 1:
                raise ValueError(f"conv_like dilation must be positive, got {self.dilation}")

    @property
    def reach(self) -> int:
        """How many rows (and columns) away the farthest visible neighbour lies."""
        return (self.opts.kernel_size // 2) * self.opts.dilation

    def band(self) -> Band:
        f = self.layout.fmap_size
        return Band(group=f, width=(self.reach + 1) * f)  # a grid row sees its own row and `reach` above

    def image_rule(self, qi: Tensor, ki: Tensor) -> Tensor:
        f, d, reach = self.layout.fmap_size, self.opts.dilation, self.reach
        dr = torch.div(qi, f, rounding_mode="floor") - torch.div(ki, f, rounding_mode="floor")
        dc = qi % f - ki % f
        return (dr.abs() <= reach) & (dc.abs() <= reach) & (dr % d == 0) & (dc % d == 0)


class BlockSparsePattern(AttentionPattern):
    """Image positions, cut into blocks of ``block_size``, see the ``local_blocks`` most recent blocks
    (their own included) plus every block whose index is ``global_stride - 1`` modulo ``global_stride``:
    the fixed pattern of Child et al., "Generating Long Sequences with Sparse Transformers" (2019)."""

    name = "sparse"

    @dataclass(frozen=True)
    class Options:
        block_size: int = 16
        local_blocks: int = 4
        global_stride: int = 4  # 0: no global blocks

        def __post_init__(self) -> None:
            for key in ("block_size", "local_blocks"):
                if getattr(self, key) < 1:
                    raise ValueError(f"sparse {key} must be positive, got {getattr(self, key)}")
            if self.global_stride < 0:
                raise ValueError(
                    f"sparse global_stride must be >= 0 (0 = no global blocks), got {self.global_stride}"
                )

    def band(self) -> Band:
        b, n, stride = self.opts.block_size, self.layout.image_len, self.opts.global_stride
        global_keys = tuple(i for i in range(n) if stride > 0 and (i // b) % stride == stride - 1)
        return Band(group=b, width=self.opts.local_blocks * b, global_keys=global_keys)

    def image_rule(self, qi: Tensor, ki: Tensor) -> Tensor:
        b, stride = self.opts.block_size, self.opts.global_stride
        bq = torch.div(qi, b, rounding_mode="floor")
        bk = torch.div(ki, b, rounding_mode="floor")
        allowed = bq - bk < self.opts.local_blocks
        if stride > 0:
            allowed = allowed | (bk % stride == stride - 1)
        return allowed


PATTERNS: dict[str, type[AttentionPattern]] = {
    cls.name: cls
    for cls in (FullPattern, AxialRowPattern, AxialColPattern, ConvLikePattern, BlockSparsePattern)
}


def pattern_options(name: str, options: Mapping[str, Any] | None = None) -> Any:
    """The ``Options`` of pattern ``name`` from a mapping (missing keys take their defaults); unknown names
    and keys are a ``ValueError`` that lists the valid ones."""
    try:
        cls = PATTERNS[name]
    except KeyError:
        raise ValueError(f"unknown attention type {name!r}: choose from {', '.join(PATTERNS)}") from None
    options = dict(options or {})
    known = [f.name for f in fields(cls.Options)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        takes = f"takes {', '.join(known)}" if known else "takes no options"
        raise ValueError(f"attention type {name!r} {takes}; got {', '.join(unknown)}")
    return cls.Options(**options)


def make_pattern(
    name: str, layout: SequenceLayout, options: Mapping[str, Any] | None = None
) -> AttentionPattern:
    """Build the pattern called ``name`` with ``options`` (its ``Options`` fields, as a mapping)."""
    opts = pattern_options(name, options)
    return PATTERNS[name](layout, opts)
