"""How many candidates should CLIP ranking draw for each image it keeps? Judged accuracy of the CLIP's best
1/k of a prompt's samples, for k = 1 (no ranking) to 6, on the trained pairs and the held-out one.

Give it a ``generate.py`` outputs folder on the built-in shapes in which every candidate was kept
(``--num_candidates N --keep N``): generate.py numbers kept images best first (``0.png`` = the CLIP's
favourite), so the best 1/k are the first N/k files. One generation answers every k, and the samples are
the same for every k (a sweep over ``--num_candidates`` would draw new ones for each).

    .venv/bin/python generate.py --prior_path RUN/prior --decoder_path RUN/decoder --text "$PROMPTS" \\
        --num_images 96 --num_candidates 96 --keep 96 --clip_path RUN/clip --steps 25 --bf16 \\
        --cf_guidance_scale 3 --outputs_dir OUT
    .venv/bin/python bench/ranking_depth.py OUT [--holdout "red triangle"]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dalle_dist.data.synthetic import parse_holdout
from dalle_dist.evaluation.score_outputs import held_out, score_folder

FRACTIONS = (1, 2, 3, 4, 6)


def top_share_accuracy(rows: list[dict], k: int) -> float:
    """Share of the best 1/k of each prompt's (best-first) images that the judge found right."""
    kept = [right for row in rows for right in row["right"][: len(row["right"]) // k]]
    return sum(kept) / len(kept)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("outputs_dir", type=Path)
    parser.add_argument("--holdout", default="red triangle")
    args = parser.parse_args()
    folders = sorted(p for p in args.outputs_dir.iterdir() if (p / "caption.txt").is_file())
    if not folders:
        print(f"error: {args.outputs_dir} holds no generate.py prompt folders", file=sys.stderr)
        return 2
    holdout = parse_holdout(args.holdout)
    rows = [score_folder(f) for f in folders]
    n = len(rows[0]["right"])
    print(f"{args.outputs_dir}: {n} images a prompt, judged right among the CLIP's best 1/k")
    print(f"{'':<10}" + "".join(f"{'all' if k == 1 else f'1/{k}':>8}" for k in FRACTIONS))
    for name, chosen in (
        ("trained", [r for r in rows if not held_out(r, holdout)]),
        ("held out", [r for r in rows if held_out(r, holdout)]),
    ):
        if chosen:
            print(f"{name:<10}" + "".join(f"{top_share_accuracy(chosen, k):>8.1%}" for k in FRACTIONS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
