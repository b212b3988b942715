"""FlexAttention executor: a pattern's ``mask_mod`` as a ``BlockMask``, run by PyTorch's FlexAttention.

On a GPU, ``torch.compile`` turns FlexAttention into Triton kernels, forward and backward, that skip every
block the mask leaves empty: the project's block-sparse attention through Triton (DeepSpeed removed its
triton-1.0 SparseSelfAttention in 0.19.7). On a CPU torch 2.13 runs it forward only, and compiled it is
slower than causal SDPA (bench/RESULTS.md, "Executor choices on the CPU"): the CPU uses the band
executor, and ``attn_impl="flex"`` on a CPU runs FlexAttention's eager reference (for checking).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class FlexPlan:
    """A pattern's ``BlockMask`` for full passes of ``length`` positions on one device."""

    length: int
    block_mask: Any


def flex_available(device: torch.device) -> bool:
    """FlexAttention can train here: a CUDA device and Triton to compile its kernels."""
    if device.type != "cuda":
        return False
    try:
        import triton  # noqa: F401
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def flex_plan(pattern: Any, length: int, device: torch.device | str) -> FlexPlan:
    """The block mask of ``pattern`` (an ``AttentionPattern``) over the first ``length`` positions."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(batch: Tensor, head: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return pattern.mask_mod(q_idx, kv_idx)

    block_mask = create_block_mask(mask_mod, B=None, H=None, Q_LEN=length, KV_LEN=length, device=device)
    return FlexPlan(length, block_mask)


@cache
def _compiled() -> Any:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_attention(q: Tensor, k: Tensor, v: Tensor, plan: FlexPlan) -> Tensor:
    """Attention of a full sequence under ``plan``: compiled kernels on a GPU, the eager reference
    elsewhere (forward only on a CPU)."""
    if q.is_cuda:
        return _compiled()(q, k, v, block_mask=plan.block_mask)
    from torch.nn.attention.flex_attention import flex_attention as eager

    with warnings.catch_warnings():  # "called without torch.compile": known, it is the reference here
        warnings.simplefilter("ignore", UserWarning)
        return eager(q, k, v, block_mask=plan.block_mask)
