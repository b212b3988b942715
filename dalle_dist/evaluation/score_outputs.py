"""Score generate.py's outputs on the built-in dataset with the shapes judge.

    python -m dalle_dist.evaluation.score_outputs OUTPUTS_DIR [--holdout "red triangle"] [--json FILE]

For every prompt folder (``caption.txt`` + ``0.png, 1.png, ...``) it counts the images that show a single
shape of the named colour and shape, and the colour alone; held-out pairs are reported apart. A two-shape
prompt ("a red circle and a blue square", ``--shapes two`` data) counts when exactly those two shapes are
there, in any place and order (and for colour, their two colours); it is held out when either pair is.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image

from ..cli import Parser, output_file
from ..data.synthetic import parse_holdout
from .shapes_judge import judge_shape, judge_shapes, matches, matches_all, parse_pairs


def score_folder(folder: Path) -> dict:
    """Judge every numbered image under one prompt folder (``right``: each image's verdict, in file order)."""
    prompt = (folder / "caption.txt").read_text(encoding="utf-8").strip()
    pairs, _ = parse_pairs(prompt)
    files = sorted((p for p in folder.glob("*.png") if p.stem.isdigit()), key=lambda p: int(p.stem))
    images = [Image.open(p).convert("RGB") for p in files]
    row = {"prompt": prompt, "pair": " and ".join(f"{c} {s}" for c, s in pairs), "images": len(images)}
    if len(pairs) == 1:
        results = [judge_shape(image) for image in images]
        right = [matches(r, prompt) for r in results]
        return {
            **row,
            "correct": sum(right),
            "color_correct": sum(r.color == pairs[0][0] for r in results),
            "seen": [f"{r.color} {r.shape}{'' if r.single else ' (not single)'}" for r in results],
            "right": right,
        }
    scenes = [judge_shapes(image) for image in images]
    right = [matches_all(found, prompt) for found in scenes]
    return {
        **row,
        "correct": sum(right),
        "color_correct": sum(matches_all(found, prompt, colours_only=True) for found in scenes),
        "seen": [" and ".join(f"{r.color} {r.shape}" for r in found) or "nothing" for found in scenes],
        "right": right,
    }


def held_out(row: dict, holdout: tuple[str, ...]) -> bool:
    """Whether a prompt's row names a held-out pair (either of a two-shape prompt's)."""
    return any(pair in holdout for pair in row["pair"].split(" and "))


def score_outputs(outputs_dir: Path, holdout: tuple[str, ...] = ()) -> dict:
    folders = sorted(p for p in outputs_dir.iterdir() if (p / "caption.txt").is_file())
    rows = [score_folder(f) for f in folders]

    def total(selected: list[dict]) -> dict:
        n = sum(r["images"] for r in selected)
        return {
            "images": n,
            "accuracy": sum(r["correct"] for r in selected) / n if n else None,
            "color_accuracy": sum(r["color_correct"] for r in selected) / n if n else None,
        }

    return {
        "prompts": rows,
        "trained_pairs": total([r for r in rows if not held_out(r, holdout)]),
        "held_out_pairs": total([r for r in rows if held_out(r, holdout)]),
        "all": total(rows),
    }


def build_parser() -> Parser:
    parser = Parser(
        prog="python -m dalle_dist.evaluation.score_outputs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("outputs_dir", type=Path)
    parser.add_argument("--holdout", default="", help="colour-shape pairs the model never saw")
    parser.add_argument("--json", type=output_file, default=None, help="also write the scores here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse(argv)
    if not args.outputs_dir.is_dir():
        print(f"error: {args.outputs_dir} is not a folder of generate.py outputs", file=sys.stderr)
        return 2
    scores = score_outputs(args.outputs_dir, parse_holdout(args.holdout) if args.holdout else ())
    for row in scores["prompts"]:
        tag = " (held out)" if held_out(row, parse_holdout(args.holdout) if args.holdout else ()) else ""
        print(
            f"{row['prompt']!r:<28} {row['correct']}/{row['images']} right, colour {row['color_correct']}/"
            f"{row['images']}{tag}"
        )

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.0f}%"

    for key, label in (
        ("trained_pairs", "trained pairs"),
        ("held_out_pairs", "held-out pairs"),
        ("all", "all"),
    ):
        t = scores[key]
        if t["images"]:
            print(
                f"{label}: colour and shape right {pct(t['accuracy'])}, "
                f"colour right {pct(t['color_accuracy'])} ({t['images']} images)"
            )
    if args.json:
        args.json.write_text(json.dumps(scores, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
