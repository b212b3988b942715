"""Executors that run attention under a pattern's mask.

This module holds the dense reference (explicit softmax, used by the tests), the scaled-dot-product
executor with a dense mask, and the band executor that computes only what a pattern allows. A layer's
``AttentionPlan`` carries its pattern as a dense ``[L, L]`` mask (or ``causal=True`` for plain causal
attention), optionally with a ``BandPlan`` or a ``FlexPlan`` for full passes (``planner.py`` decides
which); ``q_offset`` says which rows the queries are, so the same call serves a full forward pass and a
cached decode step.

The band executor (CPU training and anything without FlexAttention): text queries run causal SDPA over
the text; image queries come in groups (a grid row, a column, a block: ``pattern.band()``) and each group
is scored against the text (one matrix product for all groups), a window of image keys read through a
strided view of the keys (``unfold``: no copies per group), and any global keys, under the exact mask the
pattern's ``mask_mod`` gives. Axial attention at a 32 x 32 grid then scores ~100 keys per query instead of
~1100; conv-like (5 x 5) scores 3 grid rows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .flex import FlexPlan, flex_attention

_HALF = (torch.bfloat16, torch.float16)
_CPU_HALF_UPCAST_MAX_LEN = 512


@dataclass(frozen=True)
class AttentionPlan:
    """How one layer attends: which keys each query may see, and the executors' plans for full passes.

    ``mask``: a ``[L, L]`` bool mask over absolute positions (row = query), sliced by offset.
    ``causal``: plain causal attention (used when ``mask`` is None).
    ``key_padding``: ``[B, K]`` bool, False for keys that are padding.
    ``band``: run full passes of ``band.length`` positions with the band executor.
    ``flex``: run full passes of ``flex.length`` positions with FlexAttention (GPU; see ``flex.py``).
    """

    mask: Tensor | None = None
    causal: bool = False
    key_padding: Tensor | None = None
    band: BandPlan | None = None
    flex: FlexPlan | None = None

    def rows(self, q_offset: int, q_len: int, kv_len: int, device: torch.device) -> Tensor | None:
        """The bool mask for queries ``[q_offset, q_offset + q_len)`` against keys ``[0, kv_len)``,
        broadcastable to ``[B, H, q_len, kv_len]``, or None when every key is visible."""
        mask = None
        if self.mask is not None:
            mask = self.mask[q_offset : q_offset + q_len, :kv_len]
        elif self.causal and not (q_len == 1 and q_offset + 1 == kv_len):
            q = torch.arange(q_offset, q_offset + q_len, device=device)
            mask = torch.arange(kv_len, device=device)[None, :] <= q[:, None]
        if self.key_padding is not None:
            pad = self.key_padding[:, None, None, :kv_len]
            mask = pad if mask is None else (mask & pad)
        return mask


@dataclass(frozen=True)
class BandPlan:
    """How the band executor runs a pattern over full passes of the first ``length`` positions.

    The pattern's ``Band`` fixes the shapes: ``groups`` groups of ``group`` image queries, each scored
    against the text and the ``global_keys`` (image indices), and a window of ``width`` image keys. ``mask
    [groups, group, text_len + len(global_keys) + width]`` (in that order) says which of those scores are
    real, from the pattern's ``mask_mod``.
    """

    length: int
    text_len: int
    fmap_size: int
    group: int
    width: int
    column_major: bool
    global_keys: Tensor
    mask: Tensor

    @property
    def groups(self) -> int:
        return self.mask.shape[0]

    def to(self, device: torch.device | str) -> BandPlan:
        """The same plan with its tensors on ``device``."""
        return replace(self, global_keys=self.global_keys.to(device), mask=self.mask.to(device))


def band_plan(pattern: Any, length: int) -> BandPlan | None:
    """The band plan of ``pattern`` (an ``AttentionPattern``) for full passes of ``length`` positions, or
    None when it has no band (``full``: causal SDPA is already the best executor)."""
    band = pattern.band()
    t, f = pattern.layout.text_len, pattern.layout.fmap_size
    if band is None or length <= t:
        return None
    n_img, n, g, w = length - t, f * f, band.group, band.width
    groups = -(-n // g)
    # grouped order -> raster image index, padded with -1 up to whole groups
    order = torch.arange(n)
    if band.column_major:
        order = order.view(f, f).t().reshape(-1)
    order = torch.cat([order, torch.full((groups * g - n,), -1)])
    # the window of group i: grouped positions (i + 1) * g - w .. (i + 1) * g - 1
    window = (torch.arange(groups)[:, None] + 1) * g - w + torch.arange(w)
    band_keys = torch.where(window >= 0, order[window.clamp(min=0)], -1)
    global_keys = torch.tensor(band.global_keys, dtype=torch.long)

    def absolute(image_index: Tensor) -> Tensor:  # image index -> sequence position; -1: not there
        return torch.where((image_index >= 0) & (image_index < n_img), image_index + t, -1)

    queries = absolute(order.view(groups, g))[:, :, None]

    def allowed(keys: Tensor) -> Tensor:
        ok = pattern.mask_mod(queries.clamp(min=0), keys.clamp(min=0))
        return ok & (queries >= 0) & (keys >= 0)

    text = allowed(torch.arange(t)[None, None, :])
    window_mask = allowed(absolute(band_keys)[:, None, :])
    glob = allowed(absolute(global_keys)[None, None, :])
    # a global key inside the group's window is scored there already: counting it twice would be wrong
    in_window = (band_keys[:, :, None] == global_keys[None, None, :]).any(dim=1)
    glob = glob & ~in_window[:, None, :]
    mask = torch.cat([text, glob, window_mask], dim=-1)
    mask[:, :, 0] |= queries[:, :, 0] < 0  # padding queries see key 0 (their output is dropped): no empty row
    return BandPlan(length, t, f, g, w, band.column_major, global_keys, mask)


def band_attention(q: Tensor, k: Tensor, v: Tensor, plan: BandPlan, dropout_p: float = 0.0) -> Tensor:
    """Attention of a full sequence under ``plan``: text queries by causal SDPA; image queries, a group at
    a time, against the text, their window of keys (a strided view: nothing is copied per group) and the
    global keys, under the exact mask. Scores of keys outside the band are never computed."""
    t, f, g, w = plan.text_len, plan.fmap_size, plan.group, plan.width
    b, h, length, d = q.shape
    groups, n_img, n = plan.groups, length - t, f * f
    # split, not sliced: a split's backward is one concatenation, each slice's a zero-filled full copy
    (q_text, q_img), (k_text, k_img), (v_text, v_img) = (x.split([t, n_img], dim=2) for x in (q, k, v))
    text = F.scaled_dot_product_attention(q_text, k_text, v_text, is_causal=True, dropout_p=dropout_p)

    def grouped(x: Tensor) -> Tensor:  # image part -> [B, H, groups * group, d] in the band's order
        x = F.pad(x, (0, 0, 0, n - n_img))
        if plan.column_major:
            x = x.view(b, h, f, f, d).transpose(2, 3).reshape(b, h, n, d)
        return F.pad(x, (0, 0, 0, groups * g - n)) if groups * g > n else x

    qi, ki, vi = grouped(q_img * d**-0.5), grouped(k_img), grouped(v_img)
    # keys every group may see (text, global image keys): one flat matrix product for all groups
    k_shared, v_shared = k_text, v_text
    n_shared = t + plan.global_keys.numel()
    if n_shared > t:
        # global keys past the end of the sequence are masked; clamped only to index something
        positions = plan.global_keys.clamp(max=n_img - 1)
        k_shared = torch.cat([k_text, k_img[:, :, positions]], dim=2)
        v_shared = torch.cat([v_text, v_img[:, :, positions]], dim=2)
    # windows of `w` keys every `g` positions, after `w - g` padding positions in front: [B, H, G, d, w]
    k_win = F.pad(ki, (0, 0, w - g, 0)).unfold(2, w, g)
    v_win = F.pad(vi, (0, 0, w - g, 0)).unfold(2, w, g)
    shared = (qi @ k_shared.transpose(-1, -2)).view(b, h, groups, g, n_shared)
    scores = torch.cat([shared, qi.view(b, h, groups, g, d) @ k_win], dim=-1)
    scores = scores.masked_fill(~plan.mask, float("-inf"))
    # half-precision scores are normalised in fp32 (as SDPA does)
    probs = scores.softmax(dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(v.dtype)
    if dropout_p > 0:
        probs = F.dropout(probs, dropout_p)
    p_shared, p_win = probs.split([n_shared, w], dim=-1)
    out = p_shared.reshape(b, h, groups * g, n_shared) @ v_shared
    out = out.view(b, h, groups, g, d) + p_win @ v_win.transpose(-1, -2)
    out = out.view(b, h, groups * g, d)
    if groups * g > n:
        out = out.split([n, groups * g - n], dim=2)[0]
    if plan.column_major:
        out = out.reshape(b, h, f, f, d).transpose(2, 3).reshape(b, h, n, d)
    if n > n_img:
        out = out.split([n_img, n - n_img], dim=2)[0]
    return torch.cat([text, out], dim=2)


def attention(
    q: Tensor, k: Tensor, v: Tensor, plan: AttentionPlan, q_offset: int | Tensor = 0, dropout_p: float = 0.0
) -> Tensor:
    """Scaled dot-product attention of ``q [B,H,n,d]`` over ``k, v [B,H,K,d]`` under ``plan``.

    A tensor ``q_offset`` holds the query positions (the fixed-shape compiled decode step): the keys are
    a whole preallocated cache, masked by position."""
    n, kv_len = q.shape[-2], k.shape[-2]
    if isinstance(q_offset, Tensor):
        return static_decode_attention(q, k, v, plan, q_offset)
    if n == 1 and plan.key_padding is None:
        return decode_attention(q, k, v, plan, q_offset)
    full_pass = q_offset == 0 and n == kv_len and plan.key_padding is None
    if plan.flex is not None and full_pass and n == plan.flex.length and dropout_p == 0:
        return flex_attention(q, k, v, plan.flex)
    if plan.band is not None and full_pass and n == plan.band.length:
        return band_attention(q, k, v, plan.band, dropout_p)
    if plan.mask is None and plan.causal and full_pass:
        return _sdpa(q, k, v, None, True, dropout_p)
    return _sdpa(q, k, v, plan.rows(q_offset, n, kv_len, q.device), False, dropout_p)


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, dropout_p: float) -> Tensor:
    """SDPA under ``mask`` (or causal). torch 2.13's CPU flash kernel is slower in bf16 than in fp32 for
    short sequences, causal (bench/RESULTS.md, "Executor choices on the CPU") or not (the CLIP's step:
    "DALL-E 2's stages in bf16 on the CPU"): short ones run in fp32."""
    if q.device.type == "cpu" and q.dtype in _HALF and k.shape[-2] <= _CPU_HALF_UPCAST_MAX_LEN:
        with torch.autocast("cpu", enabled=False):
            out = F.scaled_dot_product_attention(
                q.float(), k.float(), v.float(), attn_mask=mask, is_causal=causal, dropout_p=dropout_p
            )
        return out.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout_p)


def decode_attention(q: Tensor, k: Tensor, v: Tensor, plan: AttentionPlan, q_offset: int) -> Tensor:
    """One new query ``q [B, H, 1, d]`` at position ``q_offset`` against the cached keys: only the keys its
    pattern allows are gathered and scored, with explicit products (cheaper than a flash-attention call's
    set-up for a single query: bench/RESULTS.md, "Executor choices on the CPU")."""
    kv_len = k.shape[-2]
    if plan.mask is not None:
        keys = plan.mask[q_offset, :kv_len].nonzero().squeeze(1)
        if keys.numel() < kv_len:
            k, v = k.index_select(2, keys), v.index_select(2, keys)
    elif plan.causal and kv_len > q_offset + 1:
        k, v = k[..., : q_offset + 1, :], v[..., : q_offset + 1, :]
    return _explicit_attention(q, k, v)


def static_decode_attention(
    q: Tensor, k: Tensor, v: Tensor, plan: AttentionPlan, positions: Tensor
) -> Tensor:
    """Queries at ``positions [n]`` against a whole cache ``k, v [B, H, L, d]`` whose slots past them are
    masked: every shape is fixed, so ``torch.compile`` traces one graph for every decode step."""
    kv_len = k.shape[-2]
    if plan.mask is not None:
        allowed = plan.mask[positions, :kv_len]
    else:
        allowed = torch.arange(kv_len, device=k.device)[None, :] <= positions[:, None]
    if plan.key_padding is not None:
        allowed = allowed & plan.key_padding[:, None, None, :]
    return _explicit_attention(q, k, v, allowed)


def _explicit_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None = None) -> Tensor:
    """Scores, softmax (in fp32 at least, as SDPA) and values as plain products: for a single query they
    cost a fraction of a flash-attention call's set-up."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    probs = scores.softmax(dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(v.dtype)
    return probs @ v


def reference_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Dense attention with an explicit softmax: the ground truth every executor is checked against."""
    scores = (q.double() @ k.double().transpose(-1, -2)) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(dim=-1) @ v.double()).to(q.dtype)
