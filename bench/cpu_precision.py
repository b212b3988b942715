"""Does bf16 pay on this CPU? The ratio behind ``--amp``'s choice on a CPU (``distributed/backend.py``).

    .venv/bin/python bench/cpu_precision.py [--repeats 3]

A CPU with bf16 arithmetic (AVX512-BF16 or AMX) runs bf16 matmuls and convolutions faster than fp32; one
without it emulates bf16 in oneDNN or falls back to slow reference kernels. Measured here, in one run,
bf16 time / fp32 time for:

1. a matmul of the transformer's shape ([2048 x 256] @ [256 x 1024]);
2. make demo's DALL-E training step (configs/demo_dalle.yaml: dim 256, depth 4, 16 text + 64 image tokens,
   batch 32), bf16 autocast vs fp32;
3. make demo's VAE training step (configs/demo_vae.yaml: 32 px, batch 32), bf16 autocast with the VAE
   channels-last (what ``train_vae.py --bf16`` does) vs fp32.

It prints what ``cpu_computes_bf16()`` says and so what ``--amp`` picks. Medians of ``--repeats`` calls
after one warm-up call (bf16 steps on a CPU that emulates it take seconds each).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from timing import timed

from dalle_dist import DALLE, DiscreteVAE
from dalle_dist.devices import cpu_computes_bf16


def training_step(model: torch.nn.Module, inputs: tuple, bf16: bool) -> Callable[[], None]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            loss = model(*inputs, return_loss=True)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def demo_vae() -> DiscreteVAE:
    torch.manual_seed(0)
    return DiscreteVAE(
        image_size=32, num_tokens=128, codebook_dim=64, num_layers=2, num_resnet_blocks=1, hidden_dim=64
    )


def demo_dalle() -> DALLE:
    torch.manual_seed(0)
    return DALLE(
        vae=demo_vae(), num_text_tokens=1024, text_seq_len=16, dim=256, depth=4, heads=8, dim_head=32
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    native = cpu_computes_bf16()
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} thread(s)")
    print(f"bf16 arithmetic: {'yes' if native else 'no'} -> --amp trains in {'bf16' if native else 'fp32'}")
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2048, 256, generator=g), torch.randn(256, 1024, generator=g)
    text = torch.randint(1, 1024, (32, 16), generator=g)
    image = torch.randint(0, 128, (32, 64), generator=g)
    pictures = torch.rand(32, 3, 32, 32, generator=g)
    dalle = {bf16: training_step(demo_dalle(), (text, image), bf16) for bf16 in (False, True)}
    vae = {
        False: training_step(demo_vae(), (pictures,), False),
        True: training_step(demo_vae().to(memory_format=torch.channels_last), (pictures,), True),
    }
    cases = {
        "matmul [2048 x 256] @ [256 x 1024]": {
            False: lambda: a @ b,
            True: lambda: a.bfloat16() @ b.bfloat16(),
        },
        "demo DALL-E training step, batch 32": dalle,
        "demo VAE training step, batch 32": vae,
    }
    print(f"\n{'':<40}{'fp32 ms':>10}{'bf16 ms':>10}{'bf16 / fp32':>13}")
    for label, fns in cases.items():
        fp32, bf16 = (timed(fns[half], args.repeats, warmup=1) for half in (False, True))
        print(f"{label:<40}{fp32 * 1e3:>10.1f}{bf16 * 1e3:>10.1f}{bf16 / fp32:>12.2f}x")


if __name__ == "__main__":
    main()
