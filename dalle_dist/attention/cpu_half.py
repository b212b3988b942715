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


# torch 2.13's bf16 softmax on the CPU is vectorised 32 values at a time: rows of fewer keys (the decoder's
# 20 context tokens, its 16 pixels at 4 x 4) take a scalar path 2-3x slower than an fp32 softmax, which
# works 16 at a time (bench/RESULTS.md, "The decoder's attention heads")
SHORT_ROWS = 32


class DiffusersAttention:
    """A diffusers attention processor that runs diffusers' explicit one (``AttnProcessor``) when
    ``slow_fused_backward`` (its softmax in fp32 over fewer than ``SHORT_ROWS`` keys) and its fused SDPA
    one (``AttnProcessor2_0``) otherwise; all compute the same function. Set with
    ``model.set_attn_processor(DiffusersAttention())``: it holds no weights, so checkpoints do not change."""

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
        call = (attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args)
        if not slow_fused_backward(hidden_states):
            return self.fused(*call, **kwargs)
        if _keys(hidden_states, encoder_hidden_states) >= SHORT_ROWS or attn.upcast_softmax:
            return self.explicit(*call, **kwargs)
        attn.upcast_softmax = True  # read by attn.get_attention_scores, inside the explicit processor
        try:
            return self.explicit(*call, **kwargs)
        finally:
            attn.upcast_softmax = False


def _keys(hidden_states: Tensor, encoder_hidden_states: Tensor | None) -> int:
    """How many keys each query attends to: the context tokens, or the pixels of a [B, C, H, W] input."""
    keys = hidden_states if encoder_hidden_states is None else encoder_hidden_states
    return keys.shape[1] if keys.ndim == 3 else keys.shape[2] * keys.shape[3]
