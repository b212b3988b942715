"""DALL-E 1 (`make demo`) beside DALL-E 2 (`make demo-dalle2`) on the built-in shapes, from their runs:
judged accuracy (each run's scores.json), training samples/s per stage (the median of the rates each run
logged) and sampling images/s at 32 px, timed here with the demos' own settings, the two models taking
turns batch by batch so that load from other processes falls on both alike.

    .venv/bin/python bench/compare_dalle2.py --dalle1 runs/demo --dalle2 runs/demo-dalle2 [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from dalle_dist.checkpoint import load_dalle, load_decoder, load_prior
from dalle_dist.evaluation.clip_score import clip_scores
from dalle_dist.models import DALLE2

BATCH = 16  # both demos generate 16 images a prompt, in one batch
CANDIDATES = 3  # scripts/demo_dalle2.sh's --num_candidates 48 --keep 16


def logged_rate(run: Path) -> float | None:
    """The median samples/s a stage logged."""
    rates = [
        json.loads(line)["samples_per_s"]
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if '"samples_per_s"' in line
    ]
    return statistics.median(rates) if rates else None


def scores(run: Path) -> str:
    path = run / "scores.json"
    if not path.is_file():
        return "n/a"
    data = json.loads(path.read_text())
    trained, held = data["trained_pairs"], data["held_out_pairs"]
    held_text = f"{100 * held['accuracy']:.0f} %" if held["images"] else "n/a"
    return f"{100 * trained['accuracy']:.0f} % trained, {held_text} held out"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dalle1", type=Path, required=True, help="a make demo run (vae/, dalle/)")
    parser.add_argument(
        "--dalle2", type=Path, required=True, help="a make demo-dalle2 run (clip/, prior/, ...)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="timed batches of each model")
    parser.add_argument("--prompt", default="a red circle")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    dalle, tokenizer1, _ = load_dalle(args.dalle1 / "dalle")
    dalle.eval()
    prior, tokenizer2, _ = load_prior(args.dalle2 / "prior")
    decoder, _, _ = load_decoder(args.dalle2 / "decoder")
    dalle2 = DALLE2(prior.clip, prior, decoder, tokenizer=tokenizer2).val_mode()
    text1 = tokenizer1.tokenize([args.prompt] * BATCH, dalle.text_seq_len, truncate_text=True)

    def dalle2_ranked() -> torch.Tensor:
        """scripts/demo_dalle2.sh's generation: 3 candidates a kept image at 25 DDIM steps under bf16
        autocast (`generate.py --bf16`), CLIP-ranked."""
        prompts = [args.prompt] * BATCH
        with torch.autocast("cpu", dtype=torch.bfloat16):
            candidates = torch.cat([
                dalle2(text=prompts, cf_guidance_scale=3.0, steps=25, prior_steps=64).float()
                for _ in range(CANDIDATES)
            ])  # fmt: skip
        scores = clip_scores(prior.clip, tokenizer2, candidates.clamp(0, 1), prompts * CANDIDATES)
        return candidates[scores.argsort(descending=True)[:BATCH]]

    # scripts/demo.sh's and scripts/demo_dalle2.sh's generation settings: images/s counts kept images
    runs = {
        "DALL-E 1": lambda: dalle.generate_images(text1, filter_thres=0.9, temperature=0.7, cond_scale=2.5),
        "DALL-E 2": dalle2_ranked,
    }
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():  # warm-up, not timed
        fn()
    for _ in range(args.rounds):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
    rate = {name: BATCH / statistics.median(s) for name, s in seconds.items()}
    stages = {
        "DALL-E 1": [("VAE", args.dalle1 / "vae"), ("DALL-E", args.dalle1 / "dalle")],
        "DALL-E 2": [
            (stage, args.dalle2 / folder)
            for stage, folder in (
                ("CLIP", "clip"),
                ("prior", "prior"),
                ("autoencoder", "autoencoder"),
                ("decoder", "decoder"),
            )
            if (args.dalle2 / folder).is_dir()  # a pixel decoder's run has no autoencoder
        ],
    }
    print(
        "| model | judged (scores.json) | training samples/s per stage (logged median) "
        "| sampling images/s at 32 px |"
    )
    print("|---|---|---|---|")
    for name, run in (("DALL-E 1", args.dalle1), ("DALL-E 2", args.dalle2)):
        trained = ", ".join(
            f"{stage} {logged_rate(path) or float('nan'):.0f}" for stage, path in stages[name]
        )
        print(f"| {name} | {scores(run)} | {trained} | {rate[name]:.2f} |")
    print(
        f"\nDALL-E 1 samples {rate['DALL-E 1'] / rate['DALL-E 2']:.1f}x as many images a second as "
        "DALL-E 2 here"
    )


if __name__ == "__main__":
    main()
