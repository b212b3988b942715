"""The README's API walk-through at laptop size: train a DiscreteVAE and a DALLE on a few drawn images,
generate with the cache, rank with CLIP and save the grid.

    .venv/bin/python examples/readme_api.py [--out outputs/readme_api]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dalle_dist import CLIP, DALLE, ByteTokenizer, DiscreteVAE
from dalle_dist.data import image_grid

COLOURS = {
    "red": (0.86, 0.16, 0.16),
    "green": (0.16, 0.7, 0.24),
    "blue": (0.16, 0.31, 0.86),
    "yellow": (0.92, 0.84, 0.16),
}


def drawn_images(size: int = 32) -> tuple[list[str], torch.Tensor]:
    """A red/green/blue/yellow square on black, one per colour: just enough data to watch the API work."""
    captions, images = [], []
    for name, rgb in COLOURS.items():
        img = torch.full((3, size, size), 0.06)
        img[:, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = torch.tensor(rgb)[:, None, None]
        captions.append(f"a {name} square")
        images.append(img)
    return captions, torch.stack(images)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/readme_api"))
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    torch.manual_seed(0)
    captions, images = drawn_images()
    tokenizer = ByteTokenizer()
    text = tokenizer.tokenize(captions, context_length=16)

    vae = DiscreteVAE(
        image_size=32,
        num_layers=2,
        num_tokens=64,
        codebook_dim=32,
        hidden_dim=32,
        normalization=None,
    )
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    for _ in range(args.steps):
        loss = vae(images, return_loss=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"VAE reconstruction loss {loss.item():.4f}")

    dalle = DALLE(
        dim=64,
        vae=vae,
        num_text_tokens=tokenizer.vocab_size,
        text_seq_len=16,
        depth=2,
        heads=4,
        dim_head=16,
        attn_types=("full", "axial_row"),
    )
    opt = torch.optim.Adam([p for p in dalle.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(args.steps):
        loss = dalle(text, images, return_loss=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"DALLE loss {loss.item():.4f}")

    clip = CLIP(
        dim_text=32,
        dim_image=32,
        dim_latent=16,
        num_text_tokens=tokenizer.vocab_size,
        text_enc_depth=1,
        text_seq_len=16,
        text_heads=2,
        num_visual_tokens=64,
        visual_enc_depth=1,
        visual_heads=2,
        visual_image_size=32,
        visual_patch_size=8,
    )
    samples, scores = dalle.generate_images(text, clip=clip, filter_thres=0.95)
    args.out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        recons = vae.decode(vae.get_codebook_indices(images))
    grid = image_grid(torch.cat((images, recons.clamp(0, 1), samples.clamp(0, 1))), nrow=len(captions))
    grid.save(args.out / "grid.png")
    print(f"CLIP scores (untrained CLIP) {[round(s, 2) for s in scores.tolist()]}")
    print(f"rows: training images, their VAE reconstructions, samples for {captions}")
    print(f"wrote {args.out / 'grid.png'}")


if __name__ == "__main__":
    main()
