"""A tokenizer with no vocabulary file: UTF-8 bytes, shifted by one so that 0 stays the padding id."""

from __future__ import annotations

import torch
from torch import Tensor


class ByteTokenizer:
    """Byte-level tokenizer: ids 1..256 are bytes 0..255, 0 is padding."""

    vocab_size = 257

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``."""
        return [b + 1 for b in text.encode("utf-8")]

    def decode(self, ids: list[int] | Tensor) -> str:
        """Text of ``ids``; padding and ids outside the byte range are dropped."""
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        return bytes(i - 1 for i in ids if 1 <= i <= 256).decode("utf-8", errors="replace")

    def tokenize(
        self, texts: str | list[str], context_length: int = 256, truncate_text: bool = False
    ) -> Tensor:
        """``[len(texts), context_length]`` LongTensor, zero-padded; too-long texts raise unless truncated."""
        if isinstance(texts, str):
            texts = [texts]
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.encode(text)
            if len(ids) > context_length:
                if not truncate_text:
                    raise ValueError(
                        f"caption {text[:40]!r}... has {len(ids)} tokens, more than {context_length}: "
                        "shorten it or pass truncate_text=True (--truncate_captions)"
                    )
                ids = ids[:context_length]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out
