"""The FLOPs estimate behind MFU agrees with torch's own FLOP counter; the peak is a positive rate."""

import torch
from conftest import small_dalle
from torch.utils.flop_counter import FlopCounterMode

from dalle_dist.training.throughput import dalle_flops_per_sample, matmul_peak


def test_flops_estimate_matches_flop_counter(vae):
    """Full causal layers: the counter counts every score of the causal SDPA call (n^2), our estimate only
    the visible ones (n(n+1)/2), so the counter's total lies between our estimate and it plus the masked
    half of the attention products."""
    dalle = small_dalle(vae, dim=64, depth=3, heads=4, dim_head=16, attn_types=("full",))
    text = torch.randint(1, 50, (2, 6))
    image = torch.randint(0, 32, (2, dalle.image_seq_len))
    with FlopCounterMode(display=False) as counter:
        dalle(text, image, return_loss=True).backward()
    counted = counter.get_total_flops() / 2  # per sample
    ours = dalle_flops_per_sample(dalle)
    n = dalle.total_seq_len - 1
    masked_half = 3 * 4 * 4 * 16 * 3 * (n * n - n * (n + 1) / 2)  # 3 layers
    assert ours * 0.97 <= counted <= (ours + masked_half) * 1.03, (ours, counted, masked_half)


def test_sparse_patterns_are_credited_with_less_work(vae):
    full = dalle_flops_per_sample(small_dalle(vae, attn_types=("full",)))
    axial = dalle_flops_per_sample(small_dalle(vae, attn_types=("axial_row",)))
    assert axial < full


def test_matmul_peak_is_a_rate():
    peak = matmul_peak(torch.device("cpu"), torch.float32, seconds=0.05)
    assert 1e8 < peak < 1e14


def test_matmul_peak_in_bf16_is_a_rate_on_any_cpu():
    """bf16 too, also where the CPU emulates it (no AVX512-BF16 or AMX): the matrices stay small enough
    that a job's start-up does not wait minutes for this figure."""
    peak = matmul_peak(torch.device("cpu"), torch.bfloat16, seconds=0.05)
    assert 1e7 < peak < 1e14
