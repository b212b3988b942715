"""The image tokenizers side by side (issue #19): each quantizer trained by ``train_vae.py`` for the same
steps on the same data, then measured on held-out pictures.

Per quantizer: codebook size, the training log's last usage window (share of codes used over the last 100
batches, perplexity), held-out usage (share of the codebook the held-out pictures' tokens use), held-out
reconstruction PSNR (pixels in [0, 1], through the hard codes: what DALL-E's tokens decode to), codes
restarted (vq) and training speed as a ratio to the Gumbel dVAE's (measured in this run, same machine).

    python bench/quantizers.py                                   # shapes, demo VAE config, 1 500 steps
    python bench/quantizers.py --image_folder F --holdout_folder H  # e.g. Fashion-MNIST's train / test
        --steps 2000 --flags "--random_resize_crop_lower_ratio 1.0"  # (the example's VAE budget and crops)
    python bench/quantizers.py --quantizers gumbel vq --extra vq="--codebook_dim 8"
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dalle_dist.checkpoint import load_vae  # noqa: E402
from dalle_dist.data.folder import FolderDataset  # noqa: E402
from dalle_dist.data.synthetic import ShapesDataset  # noqa: E402

# the codebook of each: 1 024 codes (the bar: >= 1 024); FSQ's levels 8,8,4,4 make 1 024 exactly
CODEBOOK = {q: ["--num_tokens", "1024"] for q in ("gumbel", "vq", "fsq", "lfq")}
CODEBOOK["fsq"] += ["--fsq_levels", "8,8,4,4"]


def held_out_images(args: argparse.Namespace, image_size: int) -> torch.Tensor:
    if args.holdout_folder:
        data = FolderDataset(args.holdout_folder, image_size, random_crop=False)
        items = [data[i][0] for i in range(min(len(data), args.holdout))]
    else:  # the built-in shapes from another seed: pictures training never drew
        data = ShapesDataset(image_size, args.holdout, seed=987_654)
        items = [data[i][0] for i in range(len(data))]
    return torch.stack(items)


@torch.no_grad()
def measure(run: Path, images: torch.Tensor) -> dict[str, float]:
    vae, _ = load_vae(run / "final")
    vae.eval()
    ids, squared = [], 0.0
    for batch in images.split(256):
        codes = vae.get_codebook_indices(batch)
        recons = vae.denormalize(vae.decode(codes)).clamp(0, 1)
        ids.append(codes.flatten())
        squared += float(((recons - batch) ** 2).sum())
    mse = squared / images.numel()
    used = torch.bincount(torch.cat(ids), minlength=vae.num_tokens)
    return {
        "codes": vae.num_tokens,
        "held_used": float((used > 0).float().mean()),
        "psnr": -10 * math.log10(mse),
    }


def last_log(run: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "codebook_used" in r][-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quantizers", nargs="+", default=["gumbel", "vq", "fsq", "lfq"])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--config", default=str(ROOT / "configs/demo_vae.yaml"))
    p.add_argument("--image_folder", default=None)
    p.add_argument("--holdout_folder", default=None)
    p.add_argument("--holdout", type=int, default=1024, help="held-out pictures")
    p.add_argument("--out", type=Path, default=Path("runs/bench-quantizers"))
    p.add_argument("--extra", action="append", default=[], help="QUANTIZER='flags' added to its run")
    p.add_argument("--flags", default="", help="flags added to every run")
    p.add_argument("--image_size", type=int, default=32)
    args = p.parse_args()
    extra = dict(e.split("=", 1) for e in args.extra)
    images = held_out_images(args, args.image_size)
    rows = []
    for q in args.quantizers:
        run = args.out / q
        cmd = [sys.executable, str(ROOT / "train_vae.py"), "--config", args.config, "--quantizer", q]
        cmd += CODEBOOK[q] + ["--max_steps", str(args.steps), "--output", str(run), "--log_every", "100"]
        cmd += ["--sample_every", str(args.steps), "--save_every_n_steps", str(args.steps)]
        cmd += ["--image_folder", args.image_folder] if args.image_folder else []
        cmd += shlex.split(args.flags) + shlex.split(extra.get(q, ""))
        if run.exists():
            subprocess.run(["rm", "-rf", str(run)], check=True)
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        log = last_log(run)
        row = {"quantizer": q, **measure(run, images), "used": log["codebook_used"]}
        row |= {"perplexity": log["codebook_perplexity"], "restarted": log.get("codes_restarted", 0.0)}
        row |= {"seconds": seconds, "flags": extra.get(q, "")}
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = next((r["seconds"] for r in rows if r["quantizer"] == "gumbel"), None)
    print(f"\n{args.steps} steps each; held out: {len(images)} pictures")
    print(
        "| quantizer | codes | used (last 100 batches) | perplexity | used (held out) | PSNR dB | restarted "
        "| time vs gumbel | flags |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        speed = f"{r['seconds'] / base:.2f}x" if base else f"{r['seconds']:.0f} s"
        print(
            f"| {r['quantizer']} | {r['codes']} | {100 * r['used']:.1f} % | {r['perplexity']:.0f} | "
            f"{100 * r['held_used']:.1f} % | {r['psnr']:.2f} | {r['restarted']:.0f} | {speed} | "
            f"{r['flags']} |"
        )


if __name__ == "__main__":
    main()
