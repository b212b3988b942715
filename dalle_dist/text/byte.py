"""A tokenizer with no vocabulary file: UTF-8 bytes, shifted by one so that 0 stays the padding id."""

from __future__ import annotations

from typing import Any

from .base import Tokenizer
from .registry import register


@register
class ByteTokenizer(Tokenizer):
    """Byte-level tokenizer: ids 1..256 are bytes 0..255, 0 is padding."""

    family = "byte"
    vocab_size = 257

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``."""
        return [b + 1 for b in text.encode("utf-8")]

    def _decode(self, ids: list[int]) -> str:
        # a cut-off multi-byte character (e.g. after truncation) becomes U+FFFD rather than an error
        return bytes(i - 1 for i in ids).decode("utf-8", errors="replace")

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ByteTokenizer:
        cls._check_family(d)
        return cls()
