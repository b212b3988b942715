"""One attention call (forward + backward) per pattern and executor, as ratios in one run.

For image grids of 8 x 8, 16 x 16 and 32 x 32 tokens after 64 text positions (batch 4, 8 heads x 32,
fp32, the training length: all positions but the last), it times the band executor (only the pattern's
band of keys; ``attn_impl="structured"``) and the dense-mask SDPA executor against plain causal SDPA over
the same sequence (what ``full`` costs). Median of 7 after 2 warm-up runs.

    .venv/bin/python bench/attention_layers.py
"""

from __future__ import annotations

import torch
from timing import timed

from dalle_dist.attention import SequenceLayout, band_attention, band_plan, make_pattern
from dalle_dist.attention.kernels import AttentionPlan, attention

PATTERNS = [("axial_row", {}), ("axial_col", {}), ("conv_like", {}), ("sparse", {})]


def step(qkv: tuple, run) -> None:
    for x in qkv:
        x.grad = None
    run(*qkv).sum().backward()


def main() -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; time per forward+backward")
    print(f"{'grid':>6} {'tokens':>6} {'pattern':>10} {'dense x full':>13} {'band x full':>12}")
    causal = AttentionPlan(causal=True)
    for fmap in (8, 16, 32):
        layout = SequenceLayout(64, fmap)
        n = layout.total_len - 1
        qkv = tuple(torch.randn(4, 8, n, 32, requires_grad=True) for _ in range(3))
        full = timed(lambda qkv=qkv: step(qkv, lambda a, b, c: attention(a, b, c, causal)))
        for name, options in PATTERNS:
            pattern = make_pattern(name, layout, options)
            spec = AttentionPlan(mask=pattern.dense_mask(n))
            plan = band_plan(pattern, n)
            dense = timed(lambda qkv=qkv, spec=spec: step(qkv, lambda a, b, c: attention(a, b, c, spec)))
            fast = timed(lambda qkv=qkv, plan=plan: step(qkv, lambda a, b, c: band_attention(a, b, c, plan)))
            print(f"{fmap:>4}^2 {n:>6} {name:>10} {dense / full:>13.2f} {fast / full:>12.2f}")

    # a whole training step: DALLE (dim 256, depth 4, axial_row / axial_col layers) at a 32 x 32 grid
    from dalle_dist.models import DALLE, DiscreteVAE

    vae = DiscreteVAE(image_size=256, num_tokens=512, codebook_dim=64, num_layers=3, hidden_dim=16)
    text, image = torch.randint(1, 1000, (4, 63)), torch.rand(4, 3, 256, 256)
    times = {}
    for impl in ("dense", "auto"):
        torch.manual_seed(0)
        model = DALLE(dim=256, vae=vae, num_text_tokens=1000, text_seq_len=63, depth=4, heads=8, dim_head=32,
                      attn_types=("axial_row", "axial_col"), attn_impl=impl)  # fmt: skip
        times[impl] = timed(lambda model=model: model(text, image, return_loss=True).backward(), repeats=5)
    print(f"DALLE step (fwd+bwd, dim 256, depth 4, axial, 32^2 grid, batch 4): auto / dense = "
          f"{times['auto'] / times['dense']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
