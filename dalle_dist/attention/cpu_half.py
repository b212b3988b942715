"""Attention for training under half-precision autocast on the CPU, where torch 2.13's fused (flash) kernel
has a slow backward: timed in DALL-E 2's decoder UNet, its bf16 backward took 27 ms a call against 3.4 ms
in fp32, so a bf16 training step was slower than an fp32 one (bench/RESULTS.md, "DALL-E 2's stages in
bf16 on the CPU"). There the explicit path (matrix products and a softmax, which run in bf16 at the CPU's
bf16 matrix speed) is used instead; evaluation and sampling, which have no backward, keep the fused
kernel. Our own transformer (DALL-E's, the CLIP's) has its rule in ``kernels._sdpa``: short sequences of
half inputs on the CPU are computed in fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from .kernels import _HALF


def slow_fused_backward(x: Tensor) -> bool:
    """Whether attention over ``x`` (a layer's input) is about to be trained in half precision on the CPU:
    ``x`` on the CPU, gradients recorded, and ``x`` half or CPU autocast on in a half dtype."""
    if x.device.type != "cpu" or not torch.is_grad_enabled():
        return False
    autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") in _HALF
    return autocast or x.dtype in _HALF


@contextlib.contextmanager
def explicit_where_faster(x: Tensor) -> Iterator[None]:
    """``F.scaled_dot_product_attention`` inside runs its explicit (math) backend when
    ``slow_fused_backward(x)``; unchanged otherwise."""
    if not slow_fused_backward(x):
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        yield


class DiffusersAttention:
    """A diffusers attention processor that runs diffusers' explicit one (``AttnProcessor``) when
    ``slow_fused_backward`` and its fused SDPA one (``AttnProcessor2_0``) otherwise; both compute the same
    function. Set with ``model.set_attn_processor(DiffusersAttention())``: it holds no weights, so
    checkpoints do not change."""

    def __init__(self) -> None:
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        self.explicit, self.fused = AttnProcessor(), AttnProcessor2_0()

    def __call__(
        self,
        attn: Any,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Tensor:
        run = self.explicit if slow_fused_backward(hidden_states) else self.fused
        return run(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
