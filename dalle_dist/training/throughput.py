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
    """FLOP/s of large square matmuls on ``device`` in ``dtype`` (best of a short run): the 100 % of MFU."""
    size = 2048 if device.type == "cpu" else 8192
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best, deadline = 0.0, time.perf_counter() + seconds
    a @ b  # warm-up (allocations, kernel choice)
    while time.perf_counter() < deadline or best == 0.0:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best
