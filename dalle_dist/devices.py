"""The ``--device`` choice of the single-process tools (generation, token encoding), and what a CPU computes
natively."""

from __future__ import annotations

import torch

from .errors import UserError


def pick_device(choice: str) -> torch.device:
    """``auto`` is CUDA when visible, else the CPU; asking for CUDA without one is a user error."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible: use --device cpu or auto")
    return torch.device(choice)


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX512-BF16 or AMX). Elsewhere bf16 is emulated: on an AVX2-only
    AMD EPYC a bf16 matmul measured 46x slower than fp32, a bf16 VAE step 11x (bench/RESULTS.md)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    found = [getattr(torch.cpu, name, None) for name in checks]
    if all(check is None for check in found):  # a torch without these probes: ask oneDNN
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return any(check() for check in found if check is not None)
