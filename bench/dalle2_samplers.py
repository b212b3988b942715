"""DALL-E 2's samplers on a trained prior and decoder: judged accuracy and time of DDIM and DPM-Solver++ at
few steps against DDPM's ancestral sampler at 250, on the built-in shapes (`make demo-dalle2`'s run).

Every setting draws the same prompts x images from the same seed, through both parts (the prior with
the same sampler and steps as the decoder), and the shapes judge scores them as `score_outputs` does
(two-shape prompts by both shapes). Time is this process's wall time per image, printed as a ratio to
DDPM 250's measured in the same run (the machine is shared: no bare absolute CPU time).

    .venv/bin/python bench/dalle2_samplers.py --run runs/demo-dalle2 [--images 16]
        [--settings ddpm:250,ddim:50,ddim:25,dpm:25]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dalle_dist.checkpoint import load_decoder, load_prior
from dalle_dist.data.synthetic import parse_holdout
from dalle_dist.evaluation.shapes_judge import judge_shape, judge_shapes, matches, matches_all, parse_pairs
from dalle_dist.models import DALLE2

PROMPTS = (
    "a red circle|a green square|a blue triangle|a yellow circle|a purple square|a cyan triangle|"
    "an orange square|a pink circle|a red triangle"
)


def judged(image: torch.Tensor, prompt: str) -> bool:
    if len(parse_pairs(prompt)[0]) == 1:
        return matches(judge_shape(image), prompt)
    return matches_all(judge_shapes(image), prompt)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, required=True, help="a demo-dalle2 run (its prior/ and decoder/)")
    parser.add_argument("--prompts", default=PROMPTS, help="'|'-separated; default: make demo-dalle2's")
    parser.add_argument("--holdout", default="red triangle")
    parser.add_argument("--images", type=int, default=16, help="per prompt")
    parser.add_argument("--settings", default="ddpm:250,ddim:50,ddim:25,dpm:25", help="sampler:steps, ...")
    parser.add_argument("--cf_guidance_scale", type=float, default=3.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    prior, tokenizer, _ = load_prior(args.run / "prior")
    decoder, _, _ = load_decoder(args.run / "decoder")
    dalle2 = DALLE2(prior.clip, prior, decoder, tokenizer=tokenizer).val_mode()
    prompts, held = [p.strip() for p in args.prompts.split("|")], set(parse_holdout(args.holdout))
    rows = []
    for setting in args.settings.split(","):
        sampler, steps = setting.split(":")
        hits = {"trained": [0, 0], "held out": [0, 0]}
        start = time.perf_counter()
        for k, prompt in enumerate(prompts):
            images = dalle2(
                text=[prompt] * args.images,
                cf_guidance_scale=args.cf_guidance_scale,
                steps=int(steps),
                prior_steps=int(steps),
                sampler=sampler,
                generator=torch.Generator().manual_seed(k),
            )
            group = "held out" if any(f"{c} {s}" in held for c, s in parse_pairs(prompt)[0]) else "trained"
            hits[group][0] += sum(judged(image, prompt) for image in images)
            hits[group][1] += len(images)
        seconds = (time.perf_counter() - start) / (len(prompts) * args.images)
        row = {"sampler": sampler, "steps": int(steps), "seconds_per_image": seconds}
        row.update({g: h / n for g, (h, n) in hits.items() if n})
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = rows[0]
    print(f"\nagainst {base['sampler']} {base['steps']} (same run, same prompts and seeds):")
    print("| sampler | steps | trained pairs right | held-out right | time per image (ratio) |")
    print("|---|---|---|---|---|")
    for row in rows:
        held_out = f"{100 * row['held out']:.0f} %" if "held out" in row else "n/a"
        print(
            f"| {row['sampler']} | {row['steps']} | {100 * row['trained']:.0f} % | {held_out} | "
            f"{row['seconds_per_image'] / base['seconds_per_image']:.3f}x |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
