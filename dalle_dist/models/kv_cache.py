"""The key-value cache a transformer decodes against: preallocated once per generation, one slot per layer."""

from __future__ import annotations

from torch import Tensor


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
