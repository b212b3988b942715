"""On paper: bytes each rank communicates per optimizer step, and per-GPU memory for model state, by
backend and ZeRO stage, for DALL-E sizes a user might train. Parameter counts come from the model code
(built on the meta device: nothing is allocated); the formulas are the ZeRO paper's (Rajbhandari et al.,
"ZeRO: Memory Optimizations Toward Training Trillion Parameter Models", SC 2020, sections 5 and 7).

    .venv/bin/python bench/zero_memory.py [--gpus 8]

Per parameter, mixed-precision Adam keeps 2 bytes of bf16/fp16 weights, 2 of gradients and K = 12 of
optimizer state (fp32 master weights, Adam's m and v). Plain fp32 training keeps 4 + 4 + 8: the same 16.
Activations come on top and depend on batch size, sequence length and checkpointing/reversibility.
"""

from __future__ import annotations

import argparse

import torch

from dalle_dist.convert.mindalle import build_model
from dalle_dist.models import DALLE, DiscreteVAE

SIZES = [(512, 12), (512, 32), (1024, 12), (1024, 32), (1024, 64)]
GiB = 1024**3


def trainable_parameters(dim: int, depth: int) -> int:
    """DALLE's trainable parameters (the VAE is frozen) at 256 px, 1024 image tokens, 256 text tokens."""
    with torch.device("meta"):
        vae = DiscreteVAE(image_size=256, num_tokens=8192, codebook_dim=512, num_layers=3, hidden_dim=64)
        dalle = DALLE(
            dim=dim,
            vae=vae,
            num_text_tokens=10000,
            text_seq_len=256,
            depth=depth,
            heads=dim // 64,
            dim_head=64,
            attn_types=("full", "axial_row", "axial_col", "conv_like"),
        )
    return sum(p.numel() for p in dalle.parameters() if p.requires_grad)


def mindalle_parameters() -> int:
    """Trainable parameters of minDALL-E 1.3B as the converter builds it (its published config, our DALLE
    with the plain GPT layout on its VQGAN): the model ``python -m dalle_dist.convert 1.3B`` writes."""
    with torch.device("meta"):
        dalle = build_model()
    return sum(p.numel() for p in dalle.parameters() if p.requires_grad)


def communication(psi: int, grad_bytes: int) -> dict[str, float]:
    """Bytes one rank sends per step (ring collectives, large N: an all-reduce moves 2x the data, a
    reduce-scatter or all-gather 1x)."""
    return {
        "ddp / horovod / ZeRO-0 (all-reduce grads)": 2 * psi * grad_bytes,
        "ZeRO-1 / ZeRO-2 (reduce-scatter grads + all-gather weights)": 2 * psi * grad_bytes,
        "ZeRO-3 (+ weights gathered again for backward)": 3 * psi * grad_bytes,
    }


def memory(psi: int, n: int, k: int = 12) -> dict[str, float]:
    """Model-state bytes per GPU (ZeRO paper, mixed precision: 2 + 2 + K bytes per parameter)."""
    return {
        "ddp / horovod / ZeRO-0": (2 + 2 + k) * psi,
        "ZeRO-1 (optimizer state partitioned)": (2 + 2) * psi + k * psi / n,
        "ZeRO-2 (+ gradients partitioned)": 2 * psi + (2 + k) * psi / n,
        "ZeRO-3 (+ weights partitioned)": (2 + 2 + k) * psi / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8, help="data-parallel ranks N")
    args = parser.parse_args()
    n = args.gpus
    rows = [(dim, depth, trainable_parameters(dim, depth)) for dim, depth in SIZES]
    rows.append((1536, 42, mindalle_parameters()))  # minDALL-E 1.3B, converted (64 text, 256 image tokens)

    print(f"DALL-E at 256 px (1024 image tokens, 8192 codes), text 256 tokens; N = {n} ranks")
    print("last row: minDALL-E 1.3B as converted (16 x 16 codes of 16384, 64 text tokens of 16384)\n")
    print("Communicated per rank per optimizer step, GiB (bf16 gradients; fp32 doubles it)")
    names = list(communication(1, 2))
    print(
        f"{'dim':>5} {'depth':>5} {'params':>8}  " + "  ".join(f"{name.split(' (')[0]:>18}" for name in names)
    )
    for dim, depth, psi in rows:
        values = communication(psi, 2)
        print(
            f"{dim:>5} {depth:>5} {psi / 1e6:>7.0f}M  "
            + "  ".join(f"{values[k] / GiB:>18.2f}" for k in names)
        )
    for name in names:
        print(f"  {name}")

    print(f"\nModel state per GPU, GiB (weights + gradients + Adam state; activations not included), N = {n}")
    names = list(memory(1, n))
    print(
        f"{'dim':>5} {'depth':>5} {'params':>8}  " + "  ".join(f"{name.split(' (')[0]:>22}" for name in names)
    )
    for dim, depth, psi in rows:
        values = memory(psi, n)
        print(
            f"{dim:>5} {depth:>5} {psi / 1e6:>7.0f}M  "
            + "  ".join(f"{values[k] / GiB:>22.2f}" for k in names)
        )
    for name in names:
        print(f"  {name}")


if __name__ == "__main__":
    main()
