"""The caption side of the text-image trainers (DALL-E, CLIP): which tokenizer, and captions that fit."""

from __future__ import annotations

import argparse

from torch.utils.data import Dataset

from ..data.shards import ShardDataset
from ..errors import UserError
from ..text import BPETokenizer, Tokenizer
from ..text.options import tokenizer_from_options


def caption_tokenizer(args: argparse.Namespace, dataset: Dataset, backend) -> Tokenizer:
    """The tokenizer the flags name, or a BPE the root rank trains on the captions and sends to the others."""
    try:
        tokenizer = tokenizer_from_options(args.bpe_path, args.hug, args.chinese, args.chinese_vocab)
    except ValueError as e:
        raise UserError(str(e)) from None
    if tokenizer is not None:
        return tokenizer
    if backend.is_root:
        tokenizer = BPETokenizer.train(dataset.captions(), vocab_size=args.bpe_vocab_size)
    return backend.broadcast_object(tokenizer)


def check_captions(dataset: Dataset, tokenizer: Tokenizer, args: argparse.Namespace) -> None:
    """Fail before the first step when a caption is too long and truncation was not asked for (a stream is
    not read ahead: there such captions are skipped and reported)."""
    if args.truncate_captions or isinstance(dataset, ShardDataset):
        return
    for caption in dataset.captions():
        tokenizer.tokenize([caption], args.text_seq_len, truncate_text=False)
