"""OpenAI's DALL-E discrete VAE (Ramesh et al. 2021): its encoder and decoder, written here.

Four groups of residual blocks with three 2x resamplings between them: 8x fewer positions per side,
each a code among ``vocab_size`` (8192). The decoder's output has two values per channel, of which the
first ``output_channels`` are the logit-Laplace means: ``unmap_pixels(sigmoid(...))`` are the pixels.
Module and parameter names follow github.com/openai/DALL-E (``blocks.input``,
``blocks.group_{1..4}.block_{k}.res_path.conv_{1..4}`` and ``.id_path``, ``blocks.output.conv``; every
convolution's parameters are ``w`` and ``b``), so its weights load one-to-one. Unlike OpenAI's code, the
convolutions run in the weights' dtype (OpenAI's cast the inner ones to float16 on a GPU).

Weights. OpenAI publishes https://cdn.openai.com/dall-e/encoder.pkl and .../decoder.pkl: whole pickled
modules of its ``dall_e`` classes, whose plain unpickling would run code from the files. ``pretrained``
reads them with torch's restricted (``weights_only``) unpickler, which resolves OpenAI's class names to this
module's classes (the same tree and parameter names) and refuses every other global; the weights are then
read off the rebuilt tree. State dicts (``.pt``, ``.safetensors``) of the same modules load as well.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOGIT_LAPLACE_EPS = 0.1
GROUPS = 4  # OpenAI's group_count: fixed, it sets the 8x downsampling
_WIDTHS = (1, 2, 4, 8)  # encoder group widths in units of n_hid (the decoder runs them backwards)
_ENCODER_KERNELS = (3, 3, 3, 1)  # res_path conv_1..conv_4
_DECODER_KERNELS = (1, 3, 3, 3)


def map_pixels(x: Tensor, eps: float = LOGIT_LAPLACE_EPS) -> Tensor:
    """Pixels in [0, 1] -> [eps, 1 - eps], the encoder's input range (the logit-Laplace support)."""
    return (1 - 2 * eps) * x + eps


def unmap_pixels(x: Tensor, eps: float = LOGIT_LAPLACE_EPS) -> Tensor:
    """The inverse of ``map_pixels``, clamped to [0, 1]."""
    return ((x - eps) / (1 - 2 * eps)).clamp(0, 1)


class Conv2d(nn.Module):
    """A same-padded convolution with OpenAI's parameter names ``w`` and ``b``."""

    def __init__(self, n_in: int, n_out: int, kernel: int) -> None:
        super().__init__()
        self.padding = (kernel - 1) // 2
        self.w = nn.Parameter(torch.randn(n_out, n_in, kernel, kernel) / math.sqrt(n_in * kernel**2))
        self.b = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.w, self.b, padding=self.padding)


class ResBlock(nn.Module):
    """``id_path(x) + post_gain * res_path(x)``; ``res_path`` is four relu-conv pairs at a quarter width."""

    def __init__(self, n_in: int, n_out: int, n_layers: int, kernels: tuple[int, int, int, int]) -> None:
        super().__init__()
        n_hid = n_out // 4
        # scales each residual branch down with the total depth (OpenAI's 1 / n_layers**2)
        self.post_gain = 1 / n_layers**2
        self.id_path = Conv2d(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        widths = (n_in, n_hid, n_hid, n_hid, n_out)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i, k in enumerate(kernels):
            layers[f"relu_{i + 1}"] = nn.ReLU()
            layers[f"conv_{i + 1}"] = Conv2d(widths[i], widths[i + 1], k)
        self.res_path = nn.Sequential(layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.id_path(x) + self.post_gain * self.res_path(x)


def _check(n_hid: int, n_blk_per_group: int, vocab_size: int) -> None:
    if n_hid < 4 or n_hid % 4:
        raise ValueError(
            f"n_hid must be a positive multiple of 4 (blocks work at a quarter width), got {n_hid}"
        )
    if n_blk_per_group < 1 or vocab_size < 2:
        raise ValueError(
            f"need n_blk_per_group >= 1 and vocab_size >= 2, got {n_blk_per_group}, {vocab_size}"
        )


class Encoder(nn.Module):
    """Pixels ``[B, input_channels, H, W]`` (``map_pixels``-ed) -> logits ``[B, vocab_size, H/8, W/8]``."""

    def __init__(
        self, n_hid: int = 256, n_blk_per_group: int = 2, input_channels: int = 3, vocab_size: int = 8192
    ) -> None:
        super().__init__()
        _check(n_hid, n_blk_per_group, vocab_size)
        self._config = dict(
            n_hid=n_hid, n_blk_per_group=n_blk_per_group, input_channels=input_channels, vocab_size=vocab_size
        )
        self.input_channels, self.vocab_size = input_channels, vocab_size
        n_layers = GROUPS * n_blk_per_group
        parts: OrderedDict[str, nn.Module] = OrderedDict(input=Conv2d(input_channels, n_hid, 7))
        width = n_hid
        for g, mult in enumerate(_WIDTHS):
            group: OrderedDict[str, nn.Module] = OrderedDict()
            for k in range(n_blk_per_group):
                group[f"block_{k + 1}"] = ResBlock(width, mult * n_hid, n_layers, _ENCODER_KERNELS)
                width = mult * n_hid
            if g < GROUPS - 1:
                group["pool"] = nn.MaxPool2d(kernel_size=2)
            parts[f"group_{g + 1}"] = nn.Sequential(group)
        parts["output"] = nn.Sequential(OrderedDict(relu=nn.ReLU(), conv=Conv2d(width, vocab_size, 1)))
        self.blocks = nn.Sequential(parts)

    def config(self) -> dict[str, Any]:
        """Constructor arguments."""
        return dict(self._config)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.input_channels:
            raise ValueError(f"expected [B, {self.input_channels}, H, W] pixels, got {tuple(x.shape)}")
        return self.blocks(x)


class Decoder(nn.Module):
    """One-hot codes ``[B, vocab_size, h, w]`` -> statistics ``[B, 2 * output_channels, 8h, 8w]``."""

    def __init__(
        self,
        n_init: int = 128,
        n_hid: int = 256,
        n_blk_per_group: int = 2,
        output_channels: int = 3,
        vocab_size: int = 8192,
    ) -> None:
        super().__init__()
        _check(n_hid, n_blk_per_group, vocab_size)
        self._config = dict(
            n_init=n_init,
            n_hid=n_hid,
            n_blk_per_group=n_blk_per_group,
            output_channels=output_channels,
            vocab_size=vocab_size,
        )
        self.output_channels, self.vocab_size = output_channels, vocab_size
        n_layers = GROUPS * n_blk_per_group
        parts: OrderedDict[str, nn.Module] = OrderedDict(input=Conv2d(vocab_size, n_init, 1))
        width = n_init
        for g, mult in enumerate(reversed(_WIDTHS)):
            group: OrderedDict[str, nn.Module] = OrderedDict()
            for k in range(n_blk_per_group):
                group[f"block_{k + 1}"] = ResBlock(width, mult * n_hid, n_layers, _DECODER_KERNELS)
                width = mult * n_hid
            if g < GROUPS - 1:
                group["upsample"] = nn.Upsample(scale_factor=2, mode="nearest")
            parts[f"group_{g + 1}"] = nn.Sequential(group)
        parts["output"] = nn.Sequential(
            OrderedDict(relu=nn.ReLU(), conv=Conv2d(width, 2 * output_channels, 1))
        )
        self.blocks = nn.Sequential(parts)

    def config(self) -> dict[str, Any]:
        """Constructor arguments."""
        return dict(self._config)

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() != 4 or z.shape[1] != self.vocab_size:
            raise ValueError(f"expected one-hot codes [B, {self.vocab_size}, h, w], got {tuple(z.shape)}")
        return self.blocks(z)

    def decode_codes(self, ids: Tensor) -> Tensor:
        """Code ids ``[B, h, w]`` -> statistics, as ``forward`` of their one-hot encoding computes them.

        The input 1x1 conv of a one-hot vector is one column of its weight plus the bias: looking the
        column up skips building a ``[B, vocab_size, h, w]`` tensor (32 MiB a 256 px image)."""
        conv = self.blocks.input
        h = F.embedding(ids, conv.w[:, :, 0, 0].t()).permute(0, 3, 1, 2) + conv.b[:, None, None]
        for name, module in self.blocks.named_children():
            if name != "input":
                h = module(h)
        return h


# ------------------------------------------------------------------------ architecture from weights
def _blocks_per_group(state_dict: Mapping[str, Tensor]) -> int:
    found = {int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.group_1\.block_(\d+)\.", k))}
    if not found or found != set(range(1, max(found) + 1)):
        raise ValueError("no blocks.group_1.block_<k> weights: not an OpenAI dVAE state dict")
    return max(found)


def _shape(state_dict: Mapping[str, Tensor], key: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise ValueError(f"no {key!r} weight: not an OpenAI dVAE state dict of this part")
    return tuple(state_dict[key].shape)


def encoder_config(state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    """``Encoder`` arguments that fit ``state_dict`` (read from its weights' shapes)."""
    n_hid, channels, k, _ = _shape(state_dict, "blocks.input.w")
    if k != 7:
        raise ValueError(f"blocks.input is a {k}x{k} conv, the encoder's is 7x7 (is this the decoder?)")
    vocab = _shape(state_dict, "blocks.output.conv.w")[0]
    return dict(
        n_hid=n_hid, n_blk_per_group=_blocks_per_group(state_dict), input_channels=channels, vocab_size=vocab
    )


def decoder_config(state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    """``Decoder`` arguments that fit ``state_dict`` (read from its weights' shapes)."""
    n_init, vocab, k, _ = _shape(state_dict, "blocks.input.w")
    if k != 1:
        raise ValueError(f"blocks.input is a {k}x{k} conv, the decoder's is 1x1 (is this the encoder?)")
    out2, n_hid = _shape(state_dict, "blocks.output.conv.w")[:2]
    return dict(
        n_init=n_init,
        n_hid=n_hid,
        n_blk_per_group=_blocks_per_group(state_dict),
        output_channels=out2 // 2,
        vocab_size=vocab,
    )


__all__ = [
    "Conv2d",
    "Decoder",
    "Encoder",
    "ResBlock",
    "decoder_config",
    "encoder_config",
    "map_pixels",
    "unmap_pixels",
]
