"""Flags several scripts share, declared once: the device, and the text tokenizer."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from ..text import Tokenizer
from ..text.options import check_matches, tokenizer_from_options

DEVICES = ("auto", "cpu", "cuda", "mps")


def add_device_flag(group: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--device``: auto picks this process's GPU when there is one, else the CPU."""
    group.add_argument(
        "--device", choices=DEVICES, default="auto", help="auto: this process's GPU if there is one, else CPU"
    )


def add_tokenizer_flags(group: argparse.ArgumentParser | argparse._ArgumentGroup, *, trained: bool) -> None:
    """``--bpe_path``, ``--hug``, ``--chinese``, ``--chinese_vocab``: with ``trained`` they name the
    tokenizer an existing model was trained with (checked, or needed to convert it); otherwise they choose
    the tokenizer of a new run (without them it trains a BPE on the captions)."""
    files = (
        "a .json from python -m dalle_dist.text.train_bpe, a Hugging Face tokenizer.json, or a YouTokenToMe "
        ".model"
    )
    group.add_argument(
        "--bpe_path",
        type=Path,
        default=None,
        help=f"the tokenizer file the model was trained with ({files})"
        if trained
        else f"tokenizer to use instead of training a BPE: {files}",
    )
    group.add_argument("--hug", action="store_true", help="--bpe_path is a Hugging Face tokenizer.json")
    group.add_argument(
        "--chinese",
        action="store_true",
        help="the model was trained with --chinese (BERT Chinese)"
        if trained
        else "BERT Chinese tokenizer (transformers; see --chinese_vocab)",
    )
    group.add_argument(
        "--chinese_vocab",
        type=str,
        default=None,
        help="for --chinese (implies it): a folder or file with BERT's vocab.txt, or a hub model name; "
        "None: bert-base-chinese from the hub",
    )


def tokenizer_from_flags(args: argparse.Namespace) -> Tokenizer | None:
    """The tokenizer the tokenizer flags name, or None when they name none."""
    try:
        return tokenizer_from_options(args.bpe_path, args.hug, args.chinese, args.chinese_vocab)
    except ValueError as e:
        raise UserError(str(e)) from None


def check_tokenizer_flags(tokenizer: Tokenizer, args: argparse.Namespace, who: str) -> None:
    """For scripts that take the tokenizer from a checkpoint: tokenizer flags, when given, must name it."""
    try:
        check_matches(tokenizer, args.bpe_path, args.hug, args.chinese, args.chinese_vocab, who)
    except ValueError as e:
        raise UserError(str(e)) from None
