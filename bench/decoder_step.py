"""DALL-E 2 decoder training step (forward + v-loss + backward + AdamW) at 32 px, batch 32, for UNet layouts
against the first demo-dalle2 layout (attention at 16 and 8 px), printed as ratios measured in this run.

Each round times one step of every layout in turn, so load from other processes falls on all alike; the
ratio is the median over rounds of (baseline step / layout step). The CLIP is random: its size is the
demo's (configs/demo_clip.yaml), and its forward is part of the step as in training.

    .venv/bin/python bench/decoder_step.py [--rounds 7] [--batch 32]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dalle_dist.models.clip import CLIP
from dalle_dist.models.decoder import Decoder

LAYOUTS = {
    "dim 32, mults 1,2,2, attention 16+8 (first demo)": dict(
        dim=32, dim_mults=(1, 2, 2), attention_resolutions=(16, 8)
    ),
    "dim 32, mults 1,2,2, attention 8": dict(dim=32, dim_mults=(1, 2, 2), attention_resolutions=(8,)),
    "dim 32, mults 1,2,2,4, attention 8+4 (demo now)": dict(
        dim=32, dim_mults=(1, 2, 2, 4), attention_resolutions=(8, 4)
    ),
    "dim 16, mults 1,2,4,8, attention 8+4": dict(
        dim=16, dim_mults=(1, 2, 4, 8), attention_resolutions=(8, 4)
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    clip = CLIP(
        dim_text=128, dim_image=128, dim_latent=64, num_text_tokens=1024, text_enc_depth=2,
        text_seq_len=16, text_heads=4, visual_enc_depth=2, visual_heads=4, visual_image_size=32,
        visual_patch_size=4, dim_head=32,
    )  # fmt: skip
    images, text = torch.rand(args.batch, 3, 32, 32), torch.randint(1, 1000, (args.batch, 16))
    steps = {}
    for name, layout in LAYOUTS.items():
        # 32 heads at every resolution, the layout measured (diffusers counted heads by that name)
        decoder = Decoder(clip, cond_dim=128, attention_head_dim=32, head_dim_counts_heads=True,
                          num_image_tokens=4, **layout)  # fmt: skip
        optimizer = torch.optim.AdamW([p for p in decoder.parameters() if p.requires_grad], 1e-3)

        def step(decoder=decoder, optimizer=optimizer) -> None:
            decoder(images, text).backward()
            optimizer.step()
            optimizer.zero_grad()

        step()  # warm-up
        steps[name] = (step, sum(p.numel() for p in decoder.unet.parameters()))
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, (step, _) in steps.items():
            start = time.perf_counter()
            step()
            seconds[name].append(time.perf_counter() - start)
    base = next(iter(seconds))
    print(f"decoder training step, 32 px, batch {args.batch}, {torch.get_num_threads()} threads, fp32")
    print("| UNet | parameters | speed vs the first demo layout |")
    print("|---|---|---|")
    for name, times in seconds.items():
        ratio = statistics.median(b / t for b, t in zip(seconds[base], times, strict=True))
        print(f"| {name} | {steps[name][1] / 1e6:.2f} M | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
