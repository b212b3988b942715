"""Executors that run attention under a pattern's mask.

This module holds the dense reference (explicit softmax, used by the tests) and the scaled-dot-product
executor used by the models. A pattern arrives as its dense ``[L, L]`` mask (or ``None`` with
``causal=True`` for plain causal attention), and ``q_offset`` says which rows the queries are, so the
same call serves a full forward pass and a cached decode step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class MaskSpec:
    """What a layer may attend to.

    ``pattern``: a ``[L, L]`` bool mask over absolute positions (row = query), sliced by offset.
    ``causal``: plain causal attention (used when ``pattern`` is None).
    ``key_padding``: ``[B, K]`` bool, False for keys that are padding.
    """

    pattern: Tensor | None = None
    causal: bool = False
    key_padding: Tensor | None = None

    def rows(self, q_offset: int, q_len: int, kv_len: int, device: torch.device) -> Tensor | None:
        """The bool mask for queries ``[q_offset, q_offset + q_len)`` against keys ``[0, kv_len)``,
        broadcastable to ``[B, H, q_len, kv_len]``, or None when every key is visible."""
        mask = None
        if self.pattern is not None:
            mask = self.pattern[q_offset : q_offset + q_len, :kv_len]
        elif self.causal and not (q_len == 1 and q_offset + 1 == kv_len):
            q = torch.arange(q_offset, q_offset + q_len, device=device)
            mask = torch.arange(kv_len, device=device)[None, :] <= q[:, None]
        if self.key_padding is not None:
            pad = self.key_padding[:, None, None, :kv_len]
            mask = pad if mask is None else (mask & pad)
        return mask


def attention(
    q: Tensor, k: Tensor, v: Tensor, spec: MaskSpec, q_offset: int = 0, dropout_p: float = 0.0
) -> Tensor:
    """Scaled dot-product attention of ``q [B,H,n,d]`` over ``k, v [B,H,K,d]`` under ``spec``."""
    n, kv_len = q.shape[-2], k.shape[-2]
    if spec.pattern is None and spec.key_padding is None and spec.causal and q_offset == 0 and n == kv_len:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
    mask = spec.rows(q_offset, n, kv_len, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def reference_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Dense attention with an explicit softmax: the ground truth every executor is checked against."""
    scores = (q.double() @ k.double().transpose(-1, -2)) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(dim=-1) @ v.double()).to(q.dtype)
