"""Attention patterns of DALL-E: each one is a single mask function over sequence positions.

The sequence is ``[bos, text_1 .. text_S, image_1 .. image_N]``: ``text_len = S + 1`` text positions followed
by an ``fmap_size x fmap_size`` grid of image positions in raster order. Every pattern is causal, text
positions attend causally to text only, and image positions attend to all text. Patterns differ only in
which earlier *image* positions an image position may see; that rule is the one thing each pattern defines.

``mask_mod(q, k)`` takes broadcastable integer tensors of absolute positions and returns a bool tensor
(True = may attend), written with element-wise tensor ops only so the same function can drive a dense
mask, a FlexAttention ``BlockMask`` and a cached decode step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor


@dataclass(frozen=True)
class SequenceLayout:
    """Where text and image positions sit in a DALL-E sequence."""

    text_len: int  # bos + text tokens
    fmap_size: int  # side of the image token grid

    @property
    def image_len(self) -> int:
        return self.fmap_size * self.fmap_size

    @property
    def total_len(self) -> int:
        return self.text_len + self.image_len


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


class AttentionPattern:
    """Base class: text is causal, image sees all text, ``image_rule`` decides image -> image."""

    name: ClassVar[str]

    def __init__(self, layout: SequenceLayout) -> None:
        self.layout = layout

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

    def options(self) -> dict:
        """Parameters beyond the layout, as recorded in checkpoints."""
        return {}

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

    def __init__(self, layout: SequenceLayout, kernel_size: int = 5, dilation: int = 1) -> None:
        super().__init__(layout)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"conv_like kernel_size must be odd and positive, got {kernel_size}")
        if dilation < 1:
            raise ValueError(f"conv_like dilation must be positive, got {dilation}")
        self.kernel_size, self.dilation = kernel_size, dilation

    def band(self) -> Band:
        f = self.layout.fmap_size
        reach = (self.kernel_size // 2) * self.dilation
        return Band(group=f, width=(reach + 1) * f)  # a grid row sees its own row and `reach` rows above

    def image_rule(self, qi: Tensor, ki: Tensor) -> Tensor:
        f, d = self.layout.fmap_size, self.dilation
        reach = (self.kernel_size // 2) * d
        dr = torch.div(qi, f, rounding_mode="floor") - torch.div(ki, f, rounding_mode="floor")
        dc = qi % f - ki % f
        return (dr.abs() <= reach) & (dc.abs() <= reach) & (dr % d == 0) & (dc % d == 0)

    def options(self) -> dict:
        return {"kernel_size": self.kernel_size, "dilation": self.dilation}


class BlockSparsePattern(AttentionPattern):
    """Image positions, cut into blocks of ``block_size``, see the ``local_blocks`` most recent blocks
    (their own included) plus every block whose index is ``global_stride - 1`` modulo ``global_stride``:
    the fixed pattern of Child et al., "Generating Long Sequences with Sparse Transformers" (2019)."""

    name = "sparse"

    def __init__(
        self, layout: SequenceLayout, block_size: int = 16, local_blocks: int = 4, global_stride: int = 4
    ) -> None:
        super().__init__(layout)
        for key, value in (("block_size", block_size), ("local_blocks", local_blocks)):
            if value < 1:
                raise ValueError(f"sparse {key} must be positive, got {value}")
        if global_stride < 0:
            raise ValueError(f"sparse global_stride must be >= 0 (0 = no global blocks), got {global_stride}")
        self.block_size, self.local_blocks, self.global_stride = block_size, local_blocks, global_stride

    def band(self) -> Band:
        b, n = self.block_size, self.layout.image_len
        stride = self.global_stride
        global_keys = tuple(i for i in range(n) if stride > 0 and (i // b) % stride == stride - 1)
        return Band(group=b, width=self.local_blocks * b, global_keys=global_keys)

    def image_rule(self, qi: Tensor, ki: Tensor) -> Tensor:
        bq = torch.div(qi, self.block_size, rounding_mode="floor")
        bk = torch.div(ki, self.block_size, rounding_mode="floor")
        allowed = bq - bk < self.local_blocks
        if self.global_stride > 0:
            allowed = allowed | (bk % self.global_stride == self.global_stride - 1)
        return allowed

    def options(self) -> dict:
        return {
            "block_size": self.block_size,
            "local_blocks": self.local_blocks,
            "global_stride": self.global_stride,
        }


PATTERNS: dict[str, type[AttentionPattern]] = {
    cls.name: cls
    for cls in (FullPattern, AxialRowPattern, AxialColPattern, ConvLikePattern, BlockSparsePattern)
}


def make_pattern(name: str, layout: SequenceLayout, **options) -> AttentionPattern:
    """Build the pattern called ``name``; options that it does not take are ignored."""
    try:
        cls = PATTERNS[name]
    except KeyError:
        raise ValueError(f"unknown attention type {name!r}: choose from {', '.join(PATTERNS)}") from None
    if cls is ConvLikePattern:
        return cls(layout, **{k: options[k] for k in ("kernel_size", "dilation") if k in options})
    if cls is BlockSparsePattern:
        keys = ("block_size", "local_blocks", "global_stride")
        return cls(layout, **{k: options[k] for k in keys if k in options})
    return cls(layout)
