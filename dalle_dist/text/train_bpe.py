"""Train a tokenizer on caption files, for ``train_dalle.py --bpe_path``.

    python -m dalle_dist.text.train_bpe captions.txt --vocab_size 4096 --out tok.json
    python -m dalle_dist.text.train_bpe captions.txt --vocab_size 4096 --yttm --out tok.model

Captions are one per line; blank lines are skipped. Without ``--yttm`` it trains the default byte-level BPE
and writes our tokenizer JSON; with ``--yttm`` a YouTokenToMe model, written as a ``.model`` file (the
format DALLE-pytorch reads) when ``--out`` ends in ``.model`` and as our JSON otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .bpe import BPETokenizer
from .yttm import YttmTokenizer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dalle_dist.text.train_bpe",
        description="Train a BPE tokenizer on caption files (one caption per line).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("captions", type=Path, nargs="+", help="text files, one caption per line")
    parser.add_argument("--vocab_size", type=int, default=2048, help="number of ids, padding included")
    parser.add_argument("--out", type=Path, required=True, help="where to write the tokenizer")
    parser.add_argument("--yttm", action="store_true", help="train YouTokenToMe instead of the default BPE")
    return parser


def read_captions(paths: list[Path]) -> list[str]:
    """The non-blank lines of ``paths``; ``ValueError`` naming a file that is missing or unreadable."""
    captions = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ValueError(f"{path} does not exist: give a text file with one caption per line") from None
        except IsADirectoryError:
            raise ValueError(f"{path} is a folder: give a text file with one caption per line") from None
        except UnicodeDecodeError as err:
            raise ValueError(f"{path} is not UTF-8 text ({err})") from None
        captions += [line.strip() for line in text.splitlines() if line.strip()]
    if not captions:
        raise ValueError(f"no captions in {', '.join(map(str, paths))}: every line is blank")
    return captions


def main(argv: list[str] | None = None) -> int:
    """Run the command; bad input is one ``error:`` line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        # the checks the cli layer's output_file type makes (it sits above text/)
        if args.out.is_dir():
            raise ValueError(f"--out {args.out} is a folder: name the tokenizer file to write")
        if args.out.parent.exists() and not args.out.parent.is_dir():
            raise ValueError(
                f"--out {args.out}: {args.out.parent} is a file, so {args.out} cannot be written"
            )
        if not args.out.parent.is_dir():
            raise ValueError(f"--out {args.out}: the folder {args.out.parent} does not exist")
        captions = read_captions(args.captions)
        if args.yttm:
            tokenizer = YttmTokenizer.train(captions, vocab_size=args.vocab_size)
        else:
            tokenizer = BPETokenizer.train(captions, vocab_size=args.vocab_size)
        if args.yttm and args.out.suffix == ".model":
            tokenizer.save_model(args.out)
        else:
            tokenizer.save(args.out)
    except (ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    size, family = tokenizer.vocab_size, tokenizer.family
    print(f"{family} tokenizer with {size} ids from {len(captions)} captions: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
