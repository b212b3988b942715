"""Is the shard loader ever the bottleneck? Samples/s of the loader alone (tar read + decode + random
resized crop + to tensor, in one worker) against the training rate of the demo DALL-E, in one run.

Shards are made here: photo-like JPEGs (smooth noise, 512 x 384, quality 90) with captions, written by
``python -m dalle_dist.data.make_shards``. The loader reads them at the demo's 32 px and at 128 / 256 px.
The training rate is the demo DALL-E (configs/demo_dalle.yaml, bf16 autocast as in the demo) on the
built-in dataset, both cores.

    .venv/bin/python bench/loader.py [--samples 400]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader

from dalle_dist.data.make_shards import make_shards
from dalle_dist.data.shards import Keys, ShardDataset

ROOT = Path(__file__).resolve().parents[1]


def photos(folder: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(n):
        coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)  # upsampled: smooth like a photo
        image = Image.fromarray(coarse).resize((512, 384), Image.Resampling.BICUBIC)
        image.save(folder / f"p{i:05d}.jpg", quality=90)
        (folder / f"p{i:05d}.txt").write_text(f"a photo number {i}\n")


def loader_rate(shards: Path, image_size: int) -> float:
    """Samples/s of one worker process reading every shard once (after one warm-up pass)."""
    dataset = ShardDataset(shards, Keys.parse("jpg,txt"), image_size, shuffle_buffer=100)
    rates = []
    for epoch in range(2):
        start = time.perf_counter()
        count = sum(1 for _ in DataLoader(dataset.stream(epoch), batch_size=None, num_workers=1))
        rates.append(count / (time.perf_counter() - start))
    return rates[-1]


def training_rate(work: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    vae = work / "vae"
    run = [sys.executable, ROOT / "train_vae.py", "--config", ROOT / "configs" / "demo_vae.yaml",
           "--max_steps", "10", "--output", vae]  # fmt: skip
    subprocess.run(list(map(str, run)), check=True, capture_output=True, env=env)
    out = work / "dalle"
    run = [sys.executable, ROOT / "train_dalle.py", "--config", ROOT / "configs" / "demo_dalle.yaml",
           "--vae_path", vae, "--max_steps", "60", "--log_every", "10", "--sample_every", "100000",
           "--save_every_n_steps", "100000", "--output", out]  # fmt: skip
    subprocess.run(list(map(str, run)), check=True, capture_output=True, env=env)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in records if "samples_per_s" in r and r["step"] > 10]
    return sum(rates) / len(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=400)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dalle_dist-loader-"))
    photos(work / "photos", args.samples)
    make_shards(work / "photos", work / "shards", maxcount=100)
    train = training_rate(work)
    print(f"demo DALL-E training (32 px, batch 32, bf16, 2 threads): {train:.0f} samples/s")
    print(f"{'loader, 1 worker, 512x384 JPEG ->':36} {'samples/s':>10} {'x training rate':>16}")
    for size in (32, 128, 256):
        rate = loader_rate(work / "shards", size)
        print(f"{f'{size} px':36} {rate:>10.0f} {rate / train:>16.1f}")


if __name__ == "__main__":
    main()
