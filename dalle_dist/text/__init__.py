"""Tokenizers. Every family offers ``encode``, ``decode``, ``tokenize`` and ``vocab_size``."""

from .byte import ByteTokenizer

__all__ = ["ByteTokenizer"]
