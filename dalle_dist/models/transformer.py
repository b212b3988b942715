"""Transformer blocks shared by DALLE and CLIP: attention, feed-forward, token shift, rotary, sharing.

A layer is two residual branches (attention, then feed-forward). Layers may share branch weights
(``shared_attn_ids`` / ``shared_ff_ids``) but always keep their own decode cache. With ``reversible``
the branches run as a reversible residual sequence (see ``reversible.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import cycle, islice

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..attention import AttentionPlan, SequenceLayout, attention
from .kv_cache import KVCache, LayerCache
from .reversible import reversible_sequence


def layer_ids(ids: int | Sequence[int] | None, depth: int) -> tuple[int, ...]:
    """Per-layer sharing ids, cycled to ``depth`` as DALLE-pytorch does; ``None`` means no sharing."""
    if ids is None:
        return tuple(range(depth))
    if isinstance(ids, int):
        ids = (ids,)
    if len(ids) == 0:
        raise ValueError("shared ids must not be empty")
    return tuple(islice(cycle(ids), depth))


class Rotary(nn.Module):
    """Rotary position embedding (Su et al. 2021) over several coordinate axes.

    ``coords [L, A]`` gives each position A coordinates (for DALL-E: text index, image row, image column);
    the rotated part of each head is split evenly between the axes.
    """

    def __init__(self, dim_head: int, coords: Tensor, theta: float = 10000.0) -> None:
        super().__init__()
        axes = coords.shape[1]
        per_axis = (dim_head // axes) // 2 * 2
        if per_axis == 0:
            raise ValueError(f"dim_head {dim_head} is too small for rotary embedding over {axes} axes")
        freqs = theta ** (-torch.arange(0, per_axis, 2, dtype=torch.float64) / per_axis)
        angles = (coords.double()[:, :, None] * freqs).flatten(1)  # [L, axes * per_axis / 2]
        self.rot_dim = axes * per_axis
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)
        # one position's rotation as a [d, d] matrix is eye_rest + cos @ cos_basis + sin @ sin_basis: a
        # decode step rotates with one product instead of a dozen small operations
        half = self.rot_dim // 2
        i = torch.arange(half)
        cos_basis = torch.zeros(half, dim_head, dim_head)
        sin_basis = torch.zeros(half, dim_head, dim_head)
        cos_basis[i, i, i] = cos_basis[i, half + i, half + i] = 1.0
        sin_basis[i, half + i, i], sin_basis[i, i, half + i] = -1.0, 1.0
        rest = torch.diag((torch.arange(dim_head) >= self.rot_dim).float())
        self.register_buffer("cos_basis", cos_basis.flatten(1), persistent=False)
        self.register_buffer("sin_basis", sin_basis.flatten(1), persistent=False)
        self.register_buffer("rest", rest, persistent=False)
        self._step: tuple[int, Tensor] | None = None  # (position, matrix) last used

    def forward(self, x: Tensor, offset: int | Tensor = 0) -> Tensor:
        """Rotate ``x [..., n, d]`` whose positions start at ``offset`` (a tensor: the positions of
        ``x``, as the fixed-shape compiled decode step passes them)."""
        n = x.shape[-2]
        if isinstance(offset, Tensor):
            cos, sin = self.cos[offset].to(x.dtype), self.sin[offset].to(x.dtype)
        elif n == 1 and not torch.is_grad_enabled():
            return x @ self._step_matrix(offset, x.dtype)
        else:
            cos = self.cos[offset : offset + n].to(x.dtype)
            sin = self.sin[offset : offset + n].to(x.dtype)
        rot, rest = x[..., : self.rot_dim], x[..., self.rot_dim :]
        a, b = rot.chunk(2, dim=-1)
        return torch.cat((a * cos - b * sin, b * cos + a * sin, rest), dim=-1)

    def _step_matrix(self, position: int, dtype: torch.dtype) -> Tensor:
        """The rotation of ``position`` as a ``[d, d]`` matrix (row vectors times it), kept while the
        layers of one decode step ask for the same position."""
        step = self._step
        if step is None or step[0] != position or step[1].dtype != dtype or step[1].device != self.cos.device:
            d = self.rest.shape[0]
            turn = self.cos[position] @ self.cos_basis + self.sin[position] @ self.sin_basis
            self._step = (position, (self.rest + turn.view(d, d)).to(dtype))
        return self._step[1]


class TokenShift(nn.Module):
    """Mix features of neighbouring earlier tokens into each token, as DALLE-pytorch's ``shift_tokens``.

    Text: the first half of the channels come from the previous token. Image: the first quarter comes from
    the token above in the grid and the second quarter from the token to the left (zeros at the edges).
    """

    def __init__(self, layout: SequenceLayout) -> None:
        super().__init__()
        self.layout = layout

    def forward(self, x: Tensor, offset: int | Tensor = 0, history: Tensor | None = None) -> Tensor:
        """Shift ``x [B, n, D]`` at positions ``offset..``; ``history`` holds every input up to the end.

        A tensor ``offset`` holds the positions themselves (the fixed-shape compiled decode step)."""
        t, f = self.layout.text_len, self.layout.fmap_size
        n, q = x.shape[1], x.shape[-1] // 4
        tensor_offset = isinstance(offset, Tensor)
        if n == 1 and history is not None and not tensor_offset:
            return self._decode_step(x, offset, history)
        pos = offset if tensor_offset else torch.arange(offset, offset + n, device=x.device)
        img = pos - t
        is_img = img >= 0
        prev_ok = torch.where(is_img, img % f != 0, pos > 0)[None, :, None]
        top_ok = (is_img & (img >= f))[None, :, None]
        if history is None and not tensor_offset and offset == 0:
            # a full pass: shifting by padding keeps backward a slice (a gather's backward is a slow
            # index_put that accumulates)
            prev = F.pad(x[:, : n - 1, : 2 * q], (0, 0, 1, 0))
            top = F.pad(x[:, : max(n - f, 0), :q], (0, 0, min(f, n), 0))
        else:
            history = x if history is None else history
            prev = history[:, (pos - 1).clamp(min=0), : 2 * q]
            top = history[:, (pos - f).clamp(min=0), :q]
        zero = x.new_zeros(())
        first = torch.where(top_ok, top, torch.where(prev_ok & ~is_img[None, :, None], prev[..., :q], zero))
        second = torch.where(prev_ok, prev[..., q:], zero)
        return torch.cat((first, second, x[..., 2 * q :]), dim=-1)

    def _decode_step(self, x: Tensor, pos: int, history: Tensor) -> Tensor:
        """One position: which neighbours exist is plain arithmetic (no index tensors per step)."""
        t, f = self.layout.text_len, self.layout.fmap_size
        q = x.shape[-1] // 4
        zeros = x.new_zeros(x.shape[0], 1, q)
        if pos < t:
            prev = history[:, pos - 1 : pos, : 2 * q] if pos > 0 else x.new_zeros(x.shape[0], 1, 2 * q)
            return torch.cat((prev, x[..., 2 * q :]), dim=-1)
        row, col = divmod(pos - t, f)
        top = history[:, pos - f : pos - f + 1, :q] if row > 0 else zeros
        left = history[:, pos - 1 : pos, q : 2 * q] if col > 0 else zeros
        return torch.cat((top, left, x[..., 2 * q :]), dim=-1)


class Attention(nn.Module):
    """Multi-head attention under an ``AttentionPlan``; writes to a layer cache when given. ``qkv_bias``
    gives the query, key and value projections biases (a plain GPT's, minDALL-E's; DALLE-pytorch has none)."""

    def __init__(
        self, dim: int, heads: int = 8, dim_head: int = 64, dropout: float = 0.0, qkv_bias: bool = False
    ) -> None:
        super().__init__()
        self.heads, self.dim_head, self.dropout = heads, dim_head, dropout
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=qkv_bias)
        self.to_out = nn.Linear(heads * dim_head, dim)

    def forward(
        self,
        x: Tensor,
        plan: AttentionPlan,
        rotary: Rotary | None = None,
        cache: LayerCache | None = None,
        offset: int | Tensor = 0,
        max_len: int = 0,
    ) -> Tensor:
        b, n, _ = x.shape
        qkv = self.to_qkv(x).view(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        if rotary is not None:
            # queries and keys rotated in one set of ops; split (not sliced): its backward is one cat
            qk, v = qkv.split([2, 1])
            (q, k), v = rotary(qk, offset), v[0]
        else:
            q, k, v = qkv
        if cache is not None:
            k, v = cache.append_kv(k, v, offset, max_len)
        out = attention(q, k, v, plan, q_offset=offset, dropout_p=self.dropout if self.training else 0.0)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


FF_ACTIVATIONS = ("geglu", "gelu")


class FeedForward(nn.Module):
    """GEGLU feed-forward (Shazeer 2020; DALLE-pytorch's), or with ``activation="gelu"`` a plain GPT's
    (exact GELU between the two projections: minDALL-E's, GPT-2's with the erf form)."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0, activation: str = "geglu") -> None:
        super().__init__()
        if activation not in FF_ACTIVATIONS:
            raise ValueError(f"ff_activation must be one of {', '.join(FF_ACTIVATIONS)}, got {activation!r}")
        self.glu = activation == "geglu"
        self.proj_in = nn.Linear(dim, dim * mult * (2 if self.glu else 1))
        self.dropout = nn.Dropout(dropout)
        self.proj_out = nn.Linear(dim * mult, dim)

    def forward(self, x: Tensor) -> Tensor:
        if not self.glu:
            return self.proj_out(self.dropout(F.gelu(self.proj_in(x))))
        value, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(self.dropout(value * F.gelu(gate)))


class Branch(nn.Module):
    """One residual branch: pre-norm, optional token shift, the function, optional sandwich norm. The unit
    ``--compile`` compiles (every layer's branch of a kind reuses one graph) and FSDP shards."""

    def __init__(self, dim: int, fn: nn.Module, sandwich_norm: bool = False) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn
        self.kind = "attn" if isinstance(fn, Attention) else "ff"
        self.post_norm = nn.LayerNorm(dim) if sandwich_norm else nn.Identity()

    def forward(
        self,
        x: Tensor,
        token_shift: TokenShift | None = None,
        cache: LayerCache | None = None,
        offset: int | Tensor = 0,
        max_len: int = 0,
        **attn_kwargs,
    ) -> Tensor:
        """The branch's output for ``x [B, n, D]`` (the residual is added by the caller); ``attn_kwargs``
        (plan, rotary) go to an attention branch."""
        h = self.norm(x)
        if token_shift is not None:
            history = cache.append_shift_input(self.kind, h, offset, max_len) if cache is not None else None
            h = token_shift(h, offset, history)
        if self.kind == "attn":
            h = self.fn(h, cache=cache, offset=offset, max_len=max_len, **attn_kwargs)
        else:
            h = self.fn(h)
        return self.post_norm(h)


class Transformer(nn.Module):
    """A stack of attention + feed-forward layers with per-layer masks."""

    def __init__(
        self,
        *,
        dim: int,
        depth: int,
        heads: int = 8,
        dim_head: int = 64,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        ff_mult: int = 4,
        reversible: bool = False,
        sandwich_norm: bool = False,
        token_shift: TokenShift | None = None,
        shared_attn_ids: int | Sequence[int] | None = None,
        shared_ff_ids: int | Sequence[int] | None = None,
        activation_checkpointing: bool = False,
        qkv_bias: bool = False,
        ff_activation: str = "geglu",
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.depth, self.reversible = depth, reversible
        # recompute each block's activations in backward (torch.utils.checkpoint): reversible's alternative
        self.activation_checkpointing = activation_checkpointing
        self.attn_ids, self.ff_ids = layer_ids(shared_attn_ids, depth), layer_ids(shared_ff_ids, depth)
        self.attns = nn.ModuleDict(
            {
                str(i): Branch(dim, Attention(dim, heads, dim_head, attn_dropout, qkv_bias), sandwich_norm)
                for i in dict.fromkeys(self.attn_ids)
            }
        )
        self.ffs = nn.ModuleDict(
            {
                str(i): Branch(dim, FeedForward(dim, ff_mult, ff_dropout, ff_activation), sandwich_norm)
                for i in dict.fromkeys(self.ff_ids)
            }
        )
        self.token_shift = token_shift
        # False runs the reversible arithmetic under plain autograd (the reference for gradient tests)
        self.memory_saving = True

    def _run(
        self,
        branch: Branch,
        x: Tensor,
        offset: int | Tensor,
        cache: KVCache | None,
        layer: int,
        **attn_kwargs,
    ) -> Tensor:
        layer_cache = cache.layers[layer] if cache is not None else None
        max_len = cache.max_len if cache is not None else 0
        return branch(x, self.token_shift, layer_cache, offset, max_len, **attn_kwargs)

    def blocks(self) -> list[nn.Module]:
        """The units ``--compile`` compiles and FSDP shards: every branch (each layer's attention and
        feed-forward)."""
        return [*self.attns.values(), *self.ffs.values()]

    def forward(
        self,
        x: Tensor,
        plans: AttentionPlan | Sequence[AttentionPlan],
        rotary: Rotary | None = None,
        cache: KVCache | None = None,
        offset: int | Tensor = 0,
    ) -> Tensor:
        """Run ``x [B, n, D]`` whose first position is ``offset``; ``plans``: one for every layer, or one
        per layer."""
        if isinstance(plans, AttentionPlan):
            plans = [plans] * self.depth
        blocks = []
        for layer in range(self.depth):
            attn, ff = self.attns[str(self.attn_ids[layer])], self.ffs[str(self.ff_ids[layer])]

            def f(h, attn=attn, layer=layer):
                return self._run(attn, h, offset, cache, layer, plan=plans[layer], rotary=rotary)

            def g(h, ff=ff, layer=layer):
                return self._run(ff, h, offset, cache, layer)

            blocks.append((f, g))
        if self.reversible:
            y1, y2 = reversible_sequence(x, x, blocks, memory_saving=self.memory_saving)
            return (y1 + y2) / 2
        checkpointing = self.activation_checkpointing and cache is None and torch.is_grad_enabled()
        for f, g in blocks:
            # under checkpointing the block's RNG (dropout) is replayed in the recomputation: same gradients
            x = checkpoint(_block, x, f, g, use_reentrant=False) if checkpointing else _block(x, f, g)
        return x


def _block(x: Tensor, f, g) -> Tensor:
    x = x + f(x)
    return x + g(x)
