"""DALL-E 2's stages in bf16 on the CPU: each part's training step (forward + loss + backward + Adam) and
the decoder's and prior's sampling, at the sizes of `make demo-dalle2` (configs/demo_*.yaml, random
weights), in fp32, under bf16 autocast with attention on the bf16 fused kernel throughout, and under bf16
autocast as the models run it (attention/cpu_half.py: the explicit path while training the diffusers
parts and the prior; attention/kernels.py: short attention in fp32 for the CLIP's own transformer),
printed as ratios to fp32 measured in this run.

Each round times every mode of a part in turn, so load from other processes falls on all alike; a ratio
is the median over rounds of (fp32 time / mode time).

    .venv/bin/python bench/dalle2_bf16.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch

from dalle_dist.attention import cpu_half, kernels
from dalle_dist.models import CLIP, Autoencoder, Decoder, DiffusionPrior

_AS_MODELS_RUN_IT = cpu_half.slow_fused_backward, kernels._CPU_HALF_UPCAST_MAX_LEN


@contextlib.contextmanager
def mode(name: str) -> Iterator[None]:
    """fp32; bf16 with the fused kernel everywhere; bf16 as the models run it."""
    if name == "bf16 fused":
        cpu_half.slow_fused_backward, kernels._CPU_HALF_UPCAST_MAX_LEN = (lambda x: False), 0
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name != "fp32"):
            yield
    finally:
        cpu_half.slow_fused_backward, kernels._CPU_HALF_UPCAST_MAX_LEN = _AS_MODELS_RUN_IT


def demo_clip() -> CLIP:
    torch.manual_seed(0)
    return CLIP(dim_text=128, dim_image=128, dim_latent=64, num_text_tokens=1024, text_enc_depth=2,
                text_seq_len=16, text_heads=4, visual_enc_depth=2, visual_heads=4, visual_image_size=32,
                visual_patch_size=4, dim_head=32)  # fmt: skip


def demo_autoencoder() -> Autoencoder:
    return Autoencoder(image_size=32, widths=(32, 64), latent_channels=4, recon_weighting="contrast")


def demo_parts() -> dict[str, torch.nn.Module]:
    """Each part to train; the decoder and the prior hold frozen copies of the CLIP and autoencoder."""
    clip = demo_clip()
    decoder = Decoder(clip, autoencoder=demo_autoencoder(), dim=64, dim_mults=(1, 2, 2),
                      attention_resolutions=(8, 4), cond_dim=128, attention_head_dim=4,
                      num_image_tokens=4)  # fmt: skip
    prior = DiffusionPrior(clip, dim=256, depth=4, heads=4)
    return {"clip": demo_clip(), "prior": prior, "autoencoder": demo_autoencoder(), "decoder": decoder}


def training_step(name: str, model: torch.nn.Module, batch: int) -> Callable[[], None]:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, 32, 32, generator=g)
    text = torch.randint(1, 1024, (batch, 16), generator=g)
    text[:, 8:] = 0  # padding: short captions, as the shapes' are
    seeds = torch.arange(batch)
    losses = {
        "clip": lambda: model(text, images, return_loss=True),
        "prior": lambda: model(text, images, seeds=seeds),
        "autoencoder": lambda: model(images, seeds=seeds),
        "decoder": lambda: model(images, text, seeds=seeds),
    }
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step() -> None:
        losses[name]().backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


def run(label: str, step: Callable[[], None], modes: tuple[str, ...], rounds: int) -> None:
    seconds: dict[str, list[float]] = {m: [] for m in modes}
    for m in modes:  # warm-up
        with mode(m):
            step()
    for _ in range(rounds):
        for m in modes:
            with mode(m):
                start = time.perf_counter()
                step()
                seconds[m].append(time.perf_counter() - start)
    base = seconds["fp32"]
    cells = [f"fp32 {statistics.median(base) * 1e3:.0f} ms"]
    for m in modes[1:]:
        ratio = statistics.median(b / s for b, s in zip(base, seconds[m], strict=True))
        cells.append(f"{m} {ratio:.2f}x")
    print(f"{label:<44} " + " | ".join(cells), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads; speed-up over fp32 (higher is faster)")
    parts = demo_parts()
    batches = {"clip": 64, "prior": 64, "autoencoder": 32, "decoder": 32}  # the demo configs' batch sizes
    for name, model in parts.items():
        model.train()
        step = training_step(name, model, batches[name])
        run(f"train {name}, batch {batches[name]}", step, ("fp32", "bf16 fused", "bf16"), args.rounds)
    decoder, prior = parts["decoder"].eval(), parts["prior"].eval()
    g = torch.Generator().manual_seed(1)
    text = torch.randint(1, 1024, (16, 16), generator=g)
    embed = torch.nn.functional.normalize(torch.randn(16, decoder.embed_dim, generator=g), dim=-1)
    run(
        "sample decoder, 16 images, 25 DDIM, guidance 3",
        lambda: decoder.sample(embed, text, cond_scale=3, steps=25),
        ("fp32", "bf16"),
        args.rounds,
    )
    run(
        "sample prior, 16 embeddings, 64 DDIM, guidance 3",
        lambda: prior.sample(text, cond_scale=3, steps=64),
        ("fp32", "bf16"),
        args.rounds,
    )


if __name__ == "__main__":
    main()
