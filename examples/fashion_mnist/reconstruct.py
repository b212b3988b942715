#!/usr/bin/env python
"""The tokenizer's floor: real pictures through a trained VAE's tokens and back.

    python examples/fashion_mnist/reconstruct.py --vae_path RUN/vae --images RUN/data/reference \
        --out RUN/reconstructed

Every picture of ``--images`` (a folder per prompt, as generate.py writes and prepare.py's reference set
is) is encoded to the VAE's hard codes and decoded, and written to ``--out`` in the same layout with the
same captions. A DALL-E draws its images from these tokens, so the reconstructions' Fréchet distance to the
real test split (evaluate.py, as run.sh runs it) is the lowest its samples can reach: what the tokenizer
leaves on the table, apart from what the transformer does.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

from dalle_dist.checkpoint import load_vae
from dalle_dist.data.transforms import load_image, to_pil
from dalle_dist.errors import UserError


@torch.no_grad()
def reconstruct(vae_path: Path, images: Path, out: Path, batch_size: int = 100) -> int:
    """Write the reconstructions of every ``*.png`` under ``images`` to ``out``; returns their count."""
    pictures = sorted(p for p in images.rglob("*.png") if p.name != "grid.png")
    if not pictures:
        raise UserError(f"--images {images} holds no .png pictures: pass a folder per prompt of them")
    vae, _ = load_vae(vae_path)
    vae.eval()
    for start in range(0, len(pictures), batch_size):
        chunk = pictures[start : start + batch_size]
        batch = torch.stack([load_image(p, vae.image_size) for p in chunk])
        decoded = vae.denormalize(vae.decode(vae.get_codebook_indices(batch))).clamp(0, 1)
        for path, picture in zip(chunk, decoded, strict=True):
            target = out / path.relative_to(images)
            target.parent.mkdir(parents=True, exist_ok=True)
            to_pil(picture).save(target)
    for caption in images.rglob("caption.txt"):
        target = out / caption.relative_to(images)
        if target.parent.is_dir():
            shutil.copyfile(caption, target)
    return len(pictures)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae_path", type=Path, required=True, help="train_vae.py run directory or checkpoint")
    p.add_argument("--images", type=Path, required=True, help="a folder per prompt of real pictures")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        count = reconstruct(args.vae_path, args.images, args.out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{count} pictures through the tokenizer -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
