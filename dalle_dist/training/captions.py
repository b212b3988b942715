"""The caption side of the text-image trainers (DALL-E, CLIP): which tokenizer, captions that fit, and
the samples they make of (image, captions) pairs."""

from __future__ import annotations

import argparse
import random
from typing import Any

import torch
from torch import Tensor

from ..cli import tokenizer_from_flags
from ..data import TrainingData
from ..distributed import DistributedBackend
from ..text import BPETokenizer, Tokenizer
from .task import Task


def caption_tokenizer(
    args: argparse.Namespace, dataset: TrainingData, backend: DistributedBackend
) -> Tokenizer:
    """The tokenizer the flags name, or a BPE the root rank trains on the captions and sends to the others."""
    tokenizer = tokenizer_from_flags(args)
    if tokenizer is not None:
        return tokenizer
    if backend.is_root:
        tokenizer = BPETokenizer.train(dataset.captions(), vocab_size=args.bpe_vocab_size)
    return backend.broadcast_object(tokenizer)


def check_captions(dataset: TrainingData, tokenizer: Tokenizer, text_seq_len: int, truncate: bool) -> None:
    """Fail before the first step when a caption is too long and truncation was not asked for (a stream is
    not read ahead: there such captions are skipped and reported)."""
    if truncate or dataset.streamed:
        return
    for caption in dataset.captions():
        tokenizer.tokenize([caption], text_seq_len, truncate_text=False)


class CaptionTask(Task):
    """A task whose samples are ``(caption tokens, image)``: each sample draws one of its item's captions
    at random (from the item's own RNG), and batches stack both."""

    def __init__(
        self, model: Any, tokenizer: Tokenizer, meta: dict[str, Any], truncate_captions: bool = False
    ) -> None:
        self.model, self.tokenizer, self.meta = model, tokenizer, meta
        self.truncate_captions = truncate_captions

    def make_item(self, dataset: Any, index: int, rng: random.Random) -> tuple[Tensor, Tensor]:
        return self.make_sample(*dataset.get(index, rng), rng)

    def make_sample(self, image: Tensor, captions: list[str], rng: random.Random) -> tuple[Tensor, Tensor]:
        caption = rng.choice(captions)
        text = self.tokenizer.tokenize(
            [caption], self.model.text_seq_len, truncate_text=self.truncate_captions
        )
        return text[0], image

    def collate(self, items: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        return torch.stack([t for t, _ in items]), torch.stack([i for _, i in items])
