"""Turn an image + caption folder into WebDataset shards.

    python -m dalle_dist.data.make_shards SRC DST --maxcount 10000

Each image with a same-named ``.txt`` becomes one sample (``key.jpg`` / ``key.png`` ... as it is, not
re-encoded, + ``key.txt``) in ``DST/shard-000000.tar``, ``shard-000001.tar`` ... (webdataset's
ShardWriter). Images without captions are left out and counted. Samples are written in a seeded random
order (``--seed``; ``--in_order`` keeps the sorted names): a folder sorted by class would otherwise give
one-class shards, which a training stream's shuffle buffer cannot mix. Train with
``train_dalle.py --wds jpg;png;jpeg;webp;bmp,txt --image_text_folder DST``.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from pathlib import Path

from .folder import scan_folder


def make_shards(
    source: Path,
    target: Path,
    maxcount: int = 10000,
    maxsize: float = 3e9,
    seed: int | None = 0,
) -> tuple[int, int]:
    """Write the shards, samples in an order shuffled by ``seed`` (None: sorted by name); return
    ``(samples written, images skipped for want of a caption)``."""
    from webdataset import ShardWriter

    if not source.is_dir():
        raise SystemExit(f"error: {source} is not a folder of images and .txt captions")
    images, texts = scan_folder(source)
    keys = sorted(k for k in images if k in texts)
    if not keys:
        raise SystemExit(f"error: {source} has no image with a same-named .txt caption file")
    if seed is not None:
        random.Random(seed).shuffle(keys)
    target.mkdir(parents=True, exist_ok=True)
    with ShardWriter(str(target / "shard-%06d.tar"), maxcount=maxcount, maxsize=maxsize, verbose=0) as sink:
        for key in keys:
            image = images[key][0]
            # webdataset splits member names at the first dot of the file name: keep dots out of keys
            sample = {"__key__": key.replace(".", "_"), image.suffix.lower().lstrip("."): image.read_bytes()}
            sample["txt"] = texts[key].read_bytes()
            sink.write(sample)
    return len(keys), len(images) - len(keys)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dalle_dist.data.make_shards", description=__doc__)
    parser.add_argument("source", type=Path, help="folder of images and same-named .txt captions")
    parser.add_argument("target", type=Path, help="folder to write shard-XXXXXX.tar files into")
    parser.add_argument("--maxcount", type=int, default=10000, help="samples per shard")
    parser.add_argument("--maxsize", type=float, default=3e9, help="bytes per shard")
    parser.add_argument("--seed", type=int, default=0, help="of the order samples are written in")
    parser.add_argument("--in_order", action="store_true", help="write samples sorted by name instead")
    args = parser.parse_args(argv)
    # the cli layer's flag types sit above data/: the same checks, in the same one-line form
    problem = None
    if args.maxcount < 1:
        problem = f"--maxcount must be >= 1, got {args.maxcount}"
    elif not (math.isfinite(args.maxsize) and args.maxsize > 0):
        problem = f"--maxsize must be a finite number of bytes > 0, got {args.maxsize}"
    elif args.target.exists() and not args.target.is_dir():
        problem = f"{args.target} is a file, not a folder: name a folder for the shards"
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    seed = None if args.in_order else args.seed
    written, skipped = make_shards(args.source, args.target, args.maxcount, args.maxsize, seed)
    shards = len(list(args.target.glob("shard-*.tar")))
    print(f"wrote {written} samples into {shards} shards in {args.target}; {skipped} images had no caption")
    return 0


if __name__ == "__main__":
    sys.exit(main())
