"""``python -m dalle_dist.convert PATH --output DIR``: which converter reads PATH, and the flags."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli import Parser, add_tokenizer_flags, cli, output_folder
from ..errors import UserError
from . import dalle_pytorch, mindalle
from .common import Report, check_output


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m dalle_dist.convert",
        description="Convert a DALLE-pytorch 1.6.6 checkpoint (vae.pt, dalle.pt or a DeepSpeed folder such "
        "as dalle-ds-cp/; docs/coming_from_dalle_pytorch.md) or minDALL-E's published folder (1.3B/; "
        "docs/pretrained_layouts.md) into a dalle_dist checkpoint folder",
    )
    parser.add_argument(
        "path", type=Path, help="vae.pt, dalle.pt, a DeepSpeed checkpoint folder, or minDALL-E's folder"
    )
    parser.add_argument(
        "--output", type=output_folder, required=True, help="the checkpoint folder to write (new)"
    )
    parser.add_argument("--tag", default=None, help="DeepSpeed folder: the tag to read (default: 'latest')")
    tok = parser.add_argument_group("tokenizer (DALL-E only): the one train_dalle.py was given")
    add_tokenizer_flags(tok, trained=True)
    vq = parser.add_argument_group("VQGAN (a DALL-E trained with train_dalle.py --taming)")
    vq.add_argument(
        "--vqgan_config_path", type=Path, default=None, help="the taming config train_dalle.py was given"
    )
    vq.add_argument(
        "--taming",
        action="store_true",
        help="DALLE-pytorch's default VQGAN (ImageNet f16 / 1024): its config is downloaded once",
    )
    return parser


@cli
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse(argv)
    check_output(args.output)
    if args.path.name.endswith((".tar.gz", ".tgz", ".tar")):
        raise UserError(
            f"{args.path} is an archive: extract it first (tar -xf {args.path}) and pass the folder it holds"
        )
    report = Report()
    converter = mindalle if mindalle.is_mindalle_folder(args.path) else dalle_pytorch
    converter.convert(args, report)
    report.print()
