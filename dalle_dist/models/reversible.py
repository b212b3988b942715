"""Reversible residual sequence (Gomez et al., "The Reversible Residual Network", 2017).

Two streams run through pairs of branches, ``y1 = x1 + f(x2)`` and ``y2 = x2 + g(y1)``. Every input can
be rebuilt from the outputs, so training keeps only the last pair of activations and recomputes each
block during the backward pass: activation memory no longer grows with depth. Dropout and autocast are
replayed exactly (RNG and autocast state are recorded per branch), so gradients equal plain autograd's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

Branch = Callable[[Tensor], Tensor]


class _BranchState:
    """The RNG and autocast state a branch ran under, so its recomputation draws the same dropout masks."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        self.autocast = torch.is_autocast_enabled(device.type)
        self.autocast_dtype = torch.get_autocast_dtype(device.type)

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        devices = [self.device] if self.cuda_rng is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu_rng)
            if self.cuda_rng is not None:
                torch.cuda.set_rng_state(self.cuda_rng, self.device)
            with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast):
                yield


class _ReversibleFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x1: Tensor, x2: Tensor, blocks: Sequence[tuple[Branch, Branch]]):  # type: ignore[override]
        states = []
        with torch.no_grad():
            for f, g in blocks:
                sf = _BranchState(x1.device)
                x1 = x1 + f(x2)
                sg = _BranchState(x1.device)
                x2 = x2 + g(x1)
                states.append((sf, sg))
        ctx.blocks, ctx.states = blocks, states
        ctx.save_for_backward(x1, x2)
        return x1, x2

    @staticmethod
    def backward(ctx, dy1: Tensor, dy2: Tensor):  # type: ignore[override]
        y1, y2 = ctx.saved_tensors
        for (f, g), (sf, sg) in zip(reversed(ctx.blocks), reversed(ctx.states), strict=True):
            # undo y2 = x2 + g(y1): parameter grads of g accumulate, and y1 collects g's input grad
            with torch.enable_grad():
                y1_leaf = y1.detach().requires_grad_()
                with sg.replay():
                    gy1 = g(y1_leaf)
                torch.autograd.backward(gy1, dy2)
            with torch.no_grad():
                x2 = y2 - gy1
                dx1 = dy1 + y1_leaf.grad
            # undo y1 = x1 + f(x2)
            with torch.enable_grad():
                x2_leaf = x2.detach().requires_grad_()
                with sf.replay():
                    fx2 = f(x2_leaf)
                torch.autograd.backward(fx2, dx1)
            with torch.no_grad():
                x1 = y1 - fx2
                dx2 = dy2 + x2_leaf.grad
            y1, y2, dy1, dy2 = x1, x2, dx1, dx2
        return dy1, dy2, None


def reversible_sequence(
    x1: Tensor, x2: Tensor, blocks: Sequence[tuple[Branch, Branch]], memory_saving: bool = True
) -> tuple[Tensor, Tensor]:
    """Run ``blocks`` (pairs of branches ``f, g``) as a reversible sequence over two streams.

    With ``memory_saving`` and gradients enabled, activations are recomputed in the backward pass;
    otherwise the same arithmetic runs under plain autograd (the reference the tests compare with).
    """
    if memory_saving and torch.is_grad_enabled() and (x1.requires_grad or x2.requires_grad):
        return _ReversibleFunction.apply(x1, x2, blocks)
    for f, g in blocks:
        x1 = x1 + f(x2)
        x2 = x2 + g(x1)
    return x1, x2
