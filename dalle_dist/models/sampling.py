"""Token sampling (top-k / top-p / temperature) and the static key-value cache used while decoding."""

from __future__ import annotations

import torch
from torch import Tensor


def top_k_filter(logits: Tensor, thres: float = 0.5) -> Tensor:
    """Keep the ``max(1, (1 - thres) * vocab)`` largest logits (DALLE-pytorch's ``filter_thres``)."""
    if not 0.0 <= thres <= 1.0:
        raise ValueError(f"filter_thres must be in [0, 1], got {thres}")
    k = max(int((1 - thres) * logits.shape[-1]), 1)
    if k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, top_p: float = 1.0) -> Tensor:
    """Nucleus filtering (Holtzman et al. 2020): keep the smallest set whose probability reaches ``top_p``."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # drop a token when the mass before it already reaches top_p; the most likely token always stays
    drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample(logits: Tensor, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """Draw one token per row by the Gumbel-max trick (equivalent to sampling from softmax(logits / T))."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    u = torch.rand(logits.shape, device=logits.device, generator=generator, dtype=torch.float32)
    exponential = -torch.log(u.clamp_min(1e-20))  # > 0; clamped so that log never sees 0
    gumbel = -torch.log(exponential.clamp_min(1e-20))
    return (logits.float() / temperature + gumbel).argmax(dim=-1)


class LayerCache:
    """One layer's decode state: keys and values, and the inputs its token-shift reads back."""

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.shift_inputs: dict[str, Tensor] = {}

    def append_kv(self, k: Tensor, v: Tensor, offset: int | Tensor, max_len: int) -> tuple[Tensor, Tensor]:
        """Write ``k, v [B,H,n,d]`` at ``offset`` and return every key and value up to the new end.

        A tensor ``offset`` (one position, the compiled decode step) returns the whole buffer: its shape
        stays fixed, and the zeros past the end are masked out by the caller."""
        if self.k is None:
            # zeros, not empty: a fixed-shape step scores every slot, and garbage could be NaN
            shape = (*k.shape[:2], max_len, k.shape[-1])
            self.k, self.v = k.new_zeros(shape), v.new_zeros(shape)
        if isinstance(offset, Tensor):
            self.k.index_copy_(2, offset, k)
            self.v.index_copy_(2, offset, v)
            return self.k, self.v
        end = offset + k.shape[-2]
        self.k[:, :, offset:end] = k
        self.v[:, :, offset:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]

    def append_shift_input(self, key: str, x: Tensor, offset: int | Tensor, max_len: int) -> Tensor:
        """Record the token-shift input ``x [B,n,D]`` at ``offset``; return the whole prefix (the whole
        buffer for a tensor ``offset``)."""
        buf = self.shift_inputs.get(key)
        if buf is None:
            buf = self.shift_inputs[key] = x.new_zeros((x.shape[0], max_len, x.shape[-1]))
        if isinstance(offset, Tensor):
            return buf.index_copy_(1, offset, x)
        end = offset + x.shape[1]
        buf[:, offset:end] = x
        return buf[:, :end]


class KVCache:
    """Preallocated decode state for every layer of a transformer.

    Each *layer* (not each module) has its own slot, so layers that share weights never share a cache.
    """

    def __init__(self, depth: int, max_len: int) -> None:
        self.max_len = max_len
        self.layers = [LayerCache() for _ in range(depth)]
        self.length = 0  # positions already written
