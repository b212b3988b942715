"""Does a trained prior put a caption's embedding where CLIP puts that caption's pictures? For every
colour-shape pair of the built-in shapes (the held-out one included) it samples the prior's image
embeddings for "a {colour} {shape}" and names each by its nearest pair centroid (the mean CLIP image
embedding of real pictures of that pair): the share named right is how often the decoder is even asked
for the right picture. Beside it, the same naming of the caption's CLIP text embedding (the prior's
baseline) and of real pictures (how well CLIP itself tells the pairs apart).

    .venv/bin/python bench/prior_oracle.py --prior runs/demo-dalle2/prior [--samples 16] [--guidance 1,3]
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from dalle_dist.checkpoint import load_prior
from dalle_dist.data.synthetic import COLORS, SHAPES, ShapesDataset, parse_holdout


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prior", type=Path, required=True, help="a train_prior.py run or checkpoint")
    parser.add_argument("--samples", type=int, default=16, help="prior samples per caption")
    parser.add_argument("--pictures", type=int, default=2400, help="real pictures for the centroids")
    parser.add_argument("--guidance", default="1,3", help="classifier-free guidance scales, comma-separated")
    parser.add_argument("--steps", type=int, default=64, help="DDIM steps")
    parser.add_argument("--holdout", default="red triangle")
    parser.add_argument("--seed", type=int, default=1, help="the pictures' seed (training used 0)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    prior, tokenizer, _ = load_prior(args.prior)
    prior.eval()
    clip = prior.clip
    held = set(parse_holdout(args.holdout))

    data = ShapesDataset(clip.visual_image_size, args.pictures, args.seed, ())
    pairs = [f"{c} {s}" for c in COLORS for s in SHAPES]
    by_pair: dict[str, list[torch.Tensor]] = defaultdict(list)
    for i in range(len(data)):
        a = data.attributes(i)
        by_pair[f"{a.color} {a.shape}"].append(data[i][0])
    real = {p: clip.embed_image(torch.stack(by_pair[p])) for p in pairs}
    centroids = F.normalize(torch.stack([real[p].mean(0) for p in pairs]), dim=-1)

    def named_right(embeds: torch.Tensor, pair: str) -> float:
        return (embeds @ centroids.T).argmax(-1).eq(pairs.index(pair)).float().mean().item()

    def report(label: str, scores: dict[str, float]) -> None:
        trained = [v for p, v in scores.items() if p not in held]
        out = [v for p, v in scores.items() if p in held]
        line = f"{label}: trained pairs {sum(trained) / len(trained):.1%}"
        print(line + (f", held out {sum(out) / len(out):.1%}" if out else ""))

    report("real pictures (CLIP's own separation)", {p: named_right(real[p], p) for p in pairs})
    text = {p: tokenizer.tokenize([f"a {p}"], prior.text_seq_len, truncate_text=True) for p in pairs}
    report("caption text embedding (baseline)", {p: named_right(clip.embed_text(text[p]), p) for p in pairs})
    for scale in (float(s) for s in args.guidance.split(",")):
        scores, cosines = {}, {}
        for k, p in enumerate(pairs):
            embeds = prior.sample(
                text[p].expand(args.samples, -1),
                cond_scale=scale,
                steps=args.steps,
                generator=torch.Generator().manual_seed(k),
            )
            scores[p] = named_right(embeds, p)
            cosines[p] = (embeds @ centroids[pairs.index(p)]).mean().item()
        report(f"prior samples, guidance {scale:g}", scores)
        print("  " + ", ".join(f"{p} {scores[p]:.0%}" for p in pairs if p in held or scores[p] < 0.5))
        print(f"  cosine to the own centroid: held out {[round(cosines[p], 3) for p in sorted(held)]}")


if __name__ == "__main__":
    main()
