"""Model FLOPs utilisation: useful training FLOPs per sample over the device's measured matmul peak.

FLOPs per sample follow nanoGPT's estimate (PaLM appendix B): 6 FLOPs per weight of every matmul per
token (forward 2, backward 4), plus the attention products, 3 x (2 + 2) x inner_dim per visible key per
query. Visible keys are the pattern's (``mask.sum()``), so a sparse pattern is credited only with the work
it needs; a dense executor that computes masked-out scores does not raise its MFU.
"""

from __future__ import annotations

import time

import torch
from torch import nn


def dalle_flops_per_sample(dalle: nn.Module) -> float:
    """Training FLOPs (forward + backward) of one sample of ``dalle`` (a ``DALLE``); the frozen VAE's
    encoding is not counted."""
    n = dalle.total_seq_len - 1  # positions a training pass runs
    linear = sum(
        m.weight.numel()
        for name, m in dalle.named_modules()
        if isinstance(m, nn.Linear) and name.startswith("transformer") and m.weight.requires_grad
    )
    flops = 6.0 * linear * n
    # the output layer: text positions score text tokens only, image positions image tokens only
    s, dim = dalle.layout.text_len - 1, dalle.to_logits_norm.normalized_shape[0]
    flops += 6.0 * dim * (s * dalle.num_text_tokens + (n - s) * dalle.num_image_tokens)
    heads, dim_head = dalle.hparams.heads, dalle.hparams.dim_head
    visible = {p.name: float(p.dense_mask(n).sum()) for p in dalle.planner.layer_patterns}
    flops += 3 * 4 * heads * dim_head * sum(visible[p.name] for p in dalle.planner.layer_patterns)
    return flops


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, seconds: float = 0.3) -> float:
    """FLOP/s of large square matmuls on ``device`` in ``dtype`` (best of a short run): the 100 % of MFU.

    The matrices grow from 256 to 2 048 (CPU) or 8 192 (GPU) while the next product would take under a
    second: where ``dtype`` is emulated (bf16 on a CPU without AVX512-BF16 or AMX, ~100x slower than
    fp32) a 2 048 product takes about two minutes, and every rank of a job would wait for it at start-up.
    """
    largest = 2048 if device.type == "cpu" else 8192
    size = 256
    while True:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        a @ b  # warm-up (allocations, kernel choice)
        elapsed = _timed_matmul(a, b)
        if size >= largest or 8 * elapsed > 1.0:  # the next size costs 8x this one
            break
        size *= 2
    best, deadline = 2 * size**3 / elapsed, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        best = max(best, 2 * size**3 / _timed_matmul(a, b))
    return best


def _timed_matmul(a: torch.Tensor, b: torch.Tensor) -> float:
    """Seconds one ``a @ b`` takes (synchronised on CUDA)."""
    if a.device.type == "cuda":
        torch.cuda.synchronize(a.device)
    start = time.perf_counter()
    a @ b
    if a.device.type == "cuda":
        torch.cuda.synchronize(a.device)
    return time.perf_counter() - start
