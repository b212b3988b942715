"""Step time of DALL-E training on pixels (the frozen VAE encodes the batch every step) vs on cached token
ids (``train_dalle.py --image_tokens``), printed as a ratio measured in the same run.

One training step = forward + loss + backward + Adam step, as the loop runs it (data loading excluded: it
runs in the loader's workers either way). The two modes alternate step by step after warm-up; the
speed-up is the median over adjacent (pixel, cached) pairs of their time ratio, so load from other
processes on the machine falls on both steps of a pair alike. By default the step runs on one thread and
is timed by this process's CPU time (``--clock cpu``), which time slices lost to other processes on a
shared machine do not inflate; ``--clock wall --threads 0`` times it as training runs on an idle machine.

Two VAEs, each at 64 and 128 px with 3 down-samplings (an 8 x 8 / 16 x 16 token grid):
- demo: configs/demo_vae.yaml's width (hidden 64, 1 res block, 128 codes, codebook dim 64);
- small: bench/reversible_memory.py's (hidden 16, no res block, 512 codes, codebook dim 64).
The DALL-E is the demo's (configs/demo_dalle.yaml: dim 256, depth 4, 8 heads of 32, text 16).
``--vqgan`` adds Taming's ImageNet VQGAN architecture (f16, 1024 codes: what ``--taming`` downloads) at
256 px, a 16 x 16 grid, with untrained weights (the cost is the architecture's, not the weights').

    .venv/bin/python bench/token_cache.py [--batch 16] [--steps 7] [--amp] [--threads 1] [--clock cpu]
    .venv/bin/python bench/token_cache.py --vqgan --batch 4 --steps 3 --warmup 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dalle_dist import DALLE, DiscreteVAE

VAES = {
    "demo": dict(num_tokens=128, codebook_dim=64, hidden_dim=64, num_resnet_blocks=1),
    "small": dict(num_tokens=512, codebook_dim=64, hidden_dim=16, num_resnet_blocks=0),
}


# taming-transformers' configs/imagenet_vqgan-f16-1024 (model.params), the VQGAN --taming downloads
IMAGENET_VQGAN = {
    "target": "taming.models.vqgan.VQModel",
    "embed_dim": 256,
    "n_embed": 1024,
    "ddconfig": {
        "double_z": False,
        "z_channels": 256,
        "resolution": 256,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 128,
        "ch_mult": [1, 1, 2, 2, 4],
        "num_res_blocks": 2,
        "attn_resolutions": [16],
        "dropout": 0.0,
    },
}


def imagenet_vqgan() -> torch.nn.Module:
    """Taming's ImageNet VQGAN network, untrained (no download: its cost is what is measured)."""
    from dalle_dist.models.pretrained import VQGanVAE

    files = {"vqgan_model_path": "untrained", "vqgan_config_path": "untrained"}
    config = {"class": "VQGanVAE", **files, "sha256": dict.fromkeys(files, ""), "model": IMAGENET_VQGAN}
    return VQGanVAE.from_config(config)


def build(vae_name: str, image_size: int) -> DALLE:
    torch.manual_seed(0)
    if vae_name == "vqgan":
        vae = imagenet_vqgan()
    else:
        vae = DiscreteVAE(image_size=image_size, num_layers=3, **VAES[vae_name])
    return DALLE(dim=256, vae=vae, num_text_tokens=1024, text_seq_len=16, depth=4, heads=8, dim_head=32)


def compare(vae_name: str, image_size: int, args: argparse.Namespace) -> tuple[float, float, float, float]:
    """Median seconds per step on pixels and on tokens, the share of a pixel step spent encoding, and the
    median pixel / cached ratio of adjacent steps."""
    dalle = build(vae_name, image_size)
    optimizer = torch.optim.Adam([p for p in dalle.parameters() if p.requires_grad])
    text = torch.randint(1, 1024, (args.batch, 16))
    pixels = torch.rand(args.batch, 3, image_size, image_size)
    tokens = dalle.vae.get_codebook_indices(pixels).to(torch.int16)  # what the cache holds

    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    def step(images: torch.Tensor) -> float:
        start = clock()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp):
            loss = dalle(text, images, return_loss=True)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return clock() - start

    def encode() -> float:
        start = clock()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp):
            dalle.vae.get_codebook_indices(pixels)
        return clock() - start

    for _ in range(args.warmup):
        step(pixels), step(tokens), encode()
    times: dict[str, list[float]] = {"pixels": [], "tokens": [], "encode": []}
    for i in range(args.steps):
        # alternate which mode goes first, so neither always follows the other
        order = ("pixels", "tokens") if i % 2 == 0 else ("tokens", "pixels")
        for mode in order:
            times[mode].append(step(pixels if mode == "pixels" else tokens))
        times["encode"].append(encode())
    median = {mode: statistics.median(t) for mode, t in times.items()}
    ratio = statistics.median(p / t for p, t in zip(times["pixels"], times["tokens"], strict=True))
    return median["pixels"], median["tokens"], median["encode"] / median["pixels"], ratio


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=7, help="measured steps per mode (median taken)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast, as the demo trains")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--clock", choices=("cpu", "wall"), default="cpu", help="process CPU time or wall time"
    )
    parser.add_argument("--vqgan", action="store_true", help="Taming's ImageNet VQGAN at 256 px instead")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and torch.get_num_threads() > 1:
        parser.error("--clock cpu sums the time of all threads (idle spinning included): use --threads 1")
    precision = "bf16 autocast" if args.amp else "fp32"
    print(
        f"DALL-E dim 256 depth 4, text 16, batch {args.batch}, {precision}, {torch.get_num_threads()} threads"
    )
    print(f"median of {args.steps} interleaved steps after {args.warmup} warm-up, {args.clock} time")
    header = f"{'VAE':6} {'px':>4} {'tokens':>6} {'pixels ms':>10} {'cached ms':>10} {'encode share':>13}"
    print(f"{header} {'speed-up':>9}")
    settings = [("vqgan", 256)] if args.vqgan else [(name, size) for name in VAES for size in (64, 128)]
    for vae_name, size in settings:
        pixels, cached, share, ratio = compare(vae_name, size, args)
        grid = (size // (16 if vae_name == "vqgan" else 8)) ** 2
        print(
            f"{vae_name:6} {size:>4} {grid:>6} {pixels * 1e3:>10.1f} {cached * 1e3:>10.1f} "
            f"{share:>12.0%} {ratio:>8.2f}x"
        )


if __name__ == "__main__":
    main()
