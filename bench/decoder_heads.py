"""The demo decoder's training step under bf16 autocast on the CPU by the width of its attention heads
(4, 8, 16, 32 channels: 32, 16, 8, 4 heads at its 128 channels), and at 4 channels with the softmax over
fewer than 32 keys left in bf16 (attention/cpu_half.py computes it in fp32 there: torch's bf16 softmax
takes a scalar path on rows that short). Sizes of `make demo-dalle2` (configs/demo_decoder.yaml, the demo
CLIP and autoencoder, random weights), printed as ratios to the demo's layout (4-channel heads) measured
in this run.

Each round times every layout in turn, so load from other processes falls on all alike; a ratio is the
median over rounds of (demo's time / layout's time).

    .venv/bin/python bench/decoder_heads.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dalle2_bf16 import demo_autoencoder, demo_clip

from dalle_dist.attention import cpu_half
from dalle_dist.models import Decoder

DEMO = "heads of 4 (demo)"


def decoder(head_dim: int) -> Decoder:
    torch.manual_seed(0)
    return Decoder(demo_clip(), autoencoder=demo_autoencoder(), dim=64, dim_mults=(1, 2, 2),
                   attention_resolutions=(8, 4), cond_dim=128, attention_head_dim=head_dim,
                   num_image_tokens=4)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    images, text = torch.rand(args.batch, 3, 32, 32), torch.randint(1, 1000, (args.batch, 16))
    layouts = {
        DEMO: 4,
        "heads of 4, bf16 short softmax": 4,
        "heads of 8": 8,
        "heads of 16": 16,
        "heads of 32": 32,
    }
    models = {name: decoder(head_dim) for name, head_dim in layouts.items()}
    optimizers = {name: torch.optim.Adam(m.parameters(), 1e-4) for name, m in models.items()}
    short_rows = cpu_half.SHORT_ROWS

    def step(name: str) -> float:
        cpu_half.SHORT_ROWS = 0 if "bf16 short" in name else short_rows
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = models[name](images, text, seeds=torch.arange(args.batch))
        loss.backward()
        optimizers[name].step()
        optimizers[name].zero_grad()
        cpu_half.SHORT_ROWS = short_rows
        return time.perf_counter() - start

    for name in models:  # warm-up
        step(name), step(name)
    times = {name: [] for name in models}
    for _ in range(args.rounds):
        for name in models:
            times[name].append(min(step(name), step(name)))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; decoder training step, batch "
          f"{args.batch}, bf16 autocast; speed-up over the demo's layout (higher is faster)")  # fmt: skip
    for name in models:
        ratio = statistics.median(d / t for d, t in zip(times[DEMO], times[name], strict=True))
        print(f"{name:32s} {statistics.median(times[name]) * 1e3:6.0f} ms  {ratio:.2f}x")


if __name__ == "__main__":
    main()
