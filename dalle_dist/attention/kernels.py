"""Executors that run attention under a pattern's mask.

This module holds the dense reference (explicit softmax, used by the tests), the scaled-dot-product
executor with a dense mask, and the structured executor that computes only what a pattern allows. A
pattern arrives as its dense ``[L, L]`` mask (or ``None`` with ``causal=True`` for plain causal attention),
optionally with a ``GroupPlan``; ``q_offset`` says which rows the queries are, so the same call serves a
full forward pass and a cached decode step.

The structured executor (CPU training and anything without FlexAttention): text queries run causal SDPA
over the text; image queries come in groups (a grid row, a column, a block: ``pattern.image_groups``) and
each group attends to one gathered key list, the union of what its queries may see (derived from the mask
function itself), under the exact mask. Axial attention at a 32 x 32 grid then scores ~100 keys per query
instead of ~1100, and conv-like gathers 3 rows of keys, not 25 copies of each key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class MaskSpec:
    """What a layer may attend to.

    ``pattern``: a ``[L, L]`` bool mask over absolute positions (row = query), sliced by offset.
    ``causal``: plain causal attention (used when ``pattern`` is None).
    ``key_padding``: ``[B, K]`` bool, False for keys that are padding.
    ``plan``: run full passes of ``plan.length`` positions with the structured executor.
    """

    pattern: Tensor | None = None
    causal: bool = False
    key_padding: Tensor | None = None
    plan: GroupPlan | None = None  # the structured executor's, for full passes of ``plan.length``

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


@dataclass(frozen=True)
class GroupPlan:
    """How the structured executor runs a pattern over the first ``length`` positions.

    ``text_len`` text queries attend causally among themselves. ``queries [G, Qg]`` and ``keys [G, Kg]``
    are absolute positions (``length`` = padding), ``mask [G, Qg, Kg]`` the pattern on them.
    """

    length: int
    text_len: int
    queries: Tensor
    keys: Tensor
    mask: Tensor

    def to(self, device: torch.device | str) -> GroupPlan:
        return GroupPlan(
            self.length, self.text_len, self.queries.to(device), self.keys.to(device), self.mask.to(device)
        )


def group_plan(pattern: Any, length: int) -> GroupPlan | None:
    """The structured plan of ``pattern`` (an ``AttentionPattern``) for sequences of ``length``, or None
    when it has no image groups (``full``: causal SDPA is already the best executor)."""
    groups = pattern.image_groups()
    t = pattern.layout.text_len
    if groups is None or length <= t:
        return None
    queries = torch.where((groups >= 0) & (groups + t < length), groups + t, length)
    keep = (queries < length).any(dim=1)
    queries = queries[keep]
    pos = torch.arange(length)
    allowed = pattern.mask_mod(pos[:, None], pos[None, :])  # the pattern itself decides the key lists
    padded = torch.cat([allowed, torch.zeros(1, length, dtype=torch.bool)])  # row ``length``: padding
    union = padded[queries].any(dim=1)  # [G, length]: keys any query of the group may see
    width = int(union.sum(dim=1).max())
    # each group's keys in position order, padded with ``length``
    order = torch.where(union, pos, length).sort(dim=1).values[:, :width]
    allowed = torch.cat([padded, torch.zeros(length + 1, 1, dtype=torch.bool)], dim=1)
    mask = allowed[queries[:, :, None], order[:, None, :]]
    # padding queries see key 0 (their output is dropped) so no softmax row is empty
    mask[:, :, 0] |= queries == length
    return GroupPlan(length, t, queries, order, mask)


def structured_attention(q: Tensor, k: Tensor, v: Tensor, plan: GroupPlan, dropout_p: float = 0.0) -> Tensor:
    """Attention of a full sequence under ``plan``: only the allowed blocks are computed."""
    t = plan.text_len
    text = F.scaled_dot_product_attention(
        q[..., :t, :], k[..., :t, :], v[..., :t, :], is_causal=True, dropout_p=dropout_p
    )
    # one padding position at the end, which every padded index points at
    q, k, v = (F.pad(x, (0, 0, 0, 1)) for x in (q, k, v))
    qg = q[:, :, plan.queries]  # [B, H, G, Qg, d]
    kg, vg = k[:, :, plan.keys], v[:, :, plan.keys]  # [B, H, G, Kg, d]
    out = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=plan.mask, dropout_p=dropout_p)
    b, h, _, _, d = out.shape
    image = out.new_zeros(b, h, plan.length + 1, d)
    image = image.index_copy(2, plan.queries.flatten(), out.reshape(b, h, -1, d))
    return torch.cat([text, image[:, :, t : plan.length]], dim=2)


def attention(
    q: Tensor, k: Tensor, v: Tensor, spec: MaskSpec, q_offset: int = 0, dropout_p: float = 0.0
) -> Tensor:
    """Scaled dot-product attention of ``q [B,H,n,d]`` over ``k, v [B,H,K,d]`` under ``spec``."""
    n, kv_len = q.shape[-2], k.shape[-2]
    plan = spec.plan
    if plan is not None and q_offset == 0 and n == kv_len == plan.length and spec.key_padding is None:
        return structured_attention(q, k, v, plan, dropout_p)
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
