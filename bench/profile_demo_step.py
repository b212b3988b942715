"""Where a bf16 training step of the demo DALL-E spends its CPU time (torch.profiler, 5 steps after 3
warm-up steps): the share of matmul / attention kernels and the top operators.

    .venv/bin/python bench/profile_demo_step.py
"""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

from dalle_dist.models import DALLE, DiscreteVAE

KERNELS = (
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
)


def main() -> None:
    torch.manual_seed(0)
    # configs/demo_vae.yaml and configs/demo_dalle.yaml, batch 32, token ids as input (no VAE encode)
    vae = DiscreteVAE(
        image_size=32, num_tokens=128, codebook_dim=64, num_layers=2, hidden_dim=64, num_resnet_blocks=1
    )
    dalle = DALLE(dim=256, vae=vae, num_text_tokens=1024, text_seq_len=16, depth=4, heads=8, dim_head=32)
    optimizer = torch.optim.Adam([p for p in dalle.parameters() if p.requires_grad])
    text, image = torch.randint(1, 1024, (32, 16)), torch.randint(0, 128, (32, 64))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = dalle(text, image, return_loss=True)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    kernels = sum(e.self_cpu_time_total for e in events if e.key in KERNELS)
    print(f"matmul + attention kernels: {kernels / total:.0%} of self CPU time")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]:
        print(f"  {e.key[:60]:60} {e.self_cpu_time_total / total:6.1%}")


if __name__ == "__main__":
    main()
