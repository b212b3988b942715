"""The measurements behind four choices the code makes on a CPU, as ratios measured in one run.

    .venv/bin/python bench/cpu_choices.py

1. ``torch.optim.Adam`` without ``fused=True`` (``training/job.py``): one optimizer step over the
   parameters of a DALL-E of dim 256 and 512 (depth 4), fused vs the default for-each update.
2. Short causal attention in fp32 under bf16 (``attention/kernels.py``, up to 512 positions): causal SDPA
   forward + backward of bf16 inputs vs the same inputs in fp32, per sequence length (batch 4, 8 heads x 32).
3. The band executor, not FlexAttention, on a CPU (``attention/flex.py``, ``planner.py``): an axial
   layer's attention forward at a 32 x 32 grid (64 text positions, batch 4): compiled FlexAttention with
   the pattern's block mask and the band executor, both vs plain causal SDPA over the same positions.
4. Explicit products for a single decode query (``attention/kernels.py``): one query against 320 cached
   keys, explicit scores / softmax / values vs an SDPA call.

Each figure is the median of 7 timed calls after warm-up; the machine is named in bench/RESULTS.md.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from timing import timed

from dalle_dist.attention import SequenceLayout, band_attention, band_plan, flex_plan, make_pattern
from dalle_dist.attention.kernels import _explicit_attention


def adam() -> None:
    from dalle_dist import DALLE, DiscreteVAE

    for dim in (256, 512):
        torch.manual_seed(0)
        vae = DiscreteVAE(image_size=32, num_tokens=512, codebook_dim=256, hidden_dim=64, num_layers=2)
        model = DALLE(dim=dim, vae=vae, num_text_tokens=1024, text_seq_len=16, depth=4, heads=8, dim_head=32)
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            p.grad = torch.randn_like(p)
        steps = {}
        for fused in (False, True):
            optimizer = torch.optim.Adam(params, lr=1e-4, fused=fused)
            steps[fused] = timed(optimizer.step)
        print(
            f"1. Adam step over {sum(p.numel() for p in params) / 1e6:.1f} M parameters (DALLE dim {dim}, "
            f"depth 4): fused / for-each = {steps[True] / steps[False]:.2f}"
        )


def short_causal() -> None:
    print("2. causal SDPA forward + backward, batch 4, 8 heads x 32: bf16 / fp32 time")
    for n in (128, 320, 576, 1088):
        g = torch.Generator().manual_seed(0)
        base = [torch.randn(4, 8, n, 32, generator=g) for _ in range(3)]
        ratio = {}
        for dtype in (torch.float32, torch.bfloat16):
            qkv = [x.to(dtype).requires_grad_() for x in base]

            def step(qkv=qkv) -> None:
                F.scaled_dot_product_attention(*qkv, is_causal=True).sum().backward()

            ratio[dtype] = timed(step)
        print(f"   {n:>5} positions: {ratio[torch.bfloat16] / ratio[torch.float32]:.2f}")


def flex_on_cpu() -> None:
    layout = SequenceLayout(64, 32)
    n = layout.total_len - 1
    pattern = make_pattern("axial_row", layout)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(4, 8, n, 32, generator=g) for _ in range(3))
    from torch.nn.attention.flex_attention import flex_attention

    compiled = torch.compile(flex_attention, dynamic=False)
    block_mask = flex_plan(pattern, n, "cpu").block_mask
    plan = band_plan(pattern, n)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        causal = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
        flex = timed(lambda: compiled(q, k, v, block_mask=block_mask), warmup=3)
        band = timed(lambda: band_attention(q, k, v, plan))
    print(
        f"3. axial_row attention forward, 32 x 32 grid ({n} positions), batch 4: compiled FlexAttention / "
        f"causal SDPA = {flex / causal:.2f}; band executor / causal SDPA = {band / causal:.2f}"
    )


def decode_query() -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(4, 8, 1, 32, generator=g)
    k, v = (torch.randn(4, 8, 320, 32, generator=g) for _ in range(2))
    with torch.inference_mode():
        sdpa = timed(lambda: F.scaled_dot_product_attention(q, k, v), repeats=201, warmup=20)
        explicit = timed(lambda: _explicit_attention(q, k, v), repeats=201, warmup=20)
    print(
        f"4. one decode query against 320 keys (batch 4, 8 heads x 32): "
        f"explicit / SDPA = {explicit / sdpa:.2f} "
        f"(SDPA {sdpa * 1e6:.0f} us, explicit {explicit * 1e6:.0f} us)"
    )


def main() -> None:
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    adam()
    short_causal()
    flex_on_cpu()
    decode_query()


if __name__ == "__main__":
    main()
