"""How much of a picture survives an autoencoder? Each run's autoencoder encodes and decodes unseen pictures
of the built-in shapes, and the shapes judge scores the results: the ceiling of any latent decoder
diffusing in those latents (a decoder can only draw what the autoencoder can decode).

    .venv/bin/python bench/autoencoder_round_trip.py RUN [RUN ...] [--images 256] [--holdout "red triangle"]
        [--by_background]   # also right / pictures for each colour on each background
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import torch

from dalle_dist.checkpoint import load_autoencoder
from dalle_dist.data.synthetic import ShapesDataset
from dalle_dist.evaluation.shapes_judge import judge_shape, matches


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", type=Path, nargs="+", help="train_autoencoder.py runs or checkpoints")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--holdout", default="red triangle")
    parser.add_argument("--seed", type=int, default=1, help="the pictures' seed (training used 0)")
    parser.add_argument("--by_background", action="store_true", help="per colour and background too")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    for run in args.runs:
        autoencoder, _ = load_autoencoder(run)
        autoencoder.eval()
        data = ShapesDataset(autoencoder.image_size, args.images, args.seed, args.holdout)
        images = torch.stack([data[i][0] for i in range(args.images)])
        captions = [f"a {data.attributes(i).color} {data.attributes(i).shape}" for i in range(args.images)]
        latents = autoencoder.encode(images)
        decoded = autoencoder.decode(latents)
        verdicts = [matches(judge_shape(d), c) for d, c in zip(decoded, captions, strict=True)]
        right = sum(verdicts) / args.images
        mse = ((decoded - images) ** 2).mean().item()
        shape = " x ".join(map(str, latents.shape[1:]))
        print(f"{run}: latents {shape}, round trip judged right {right:.1%}, MSE {mse:.5f}", end="")
        print(f" ({args.images} pictures)")
        if args.by_background:
            counts: dict[tuple[str, str], list[int]] = collections.defaultdict(lambda: [0, 0])
            for i, ok in enumerate(verdicts):
                a = data.attributes(i)
                counts[a.color, a.background][0] += ok
                counts[a.color, a.background][1] += 1
            for background in sorted({b for _, b in counts}):
                cells = [f"{c} {r}/{n}" for (c, b), (r, n) in sorted(counts.items()) if b == background]
                print(f"  on {background}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
