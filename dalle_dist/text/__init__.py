"""Tokenizers: one ``Tokenizer`` interface, one module per family, and a registry to save and load them.

``BPETokenizer.train(captions)`` is the default; ``ByteTokenizer`` needs no training. Any tokenizer
``save``s to JSON and comes back with ``load_tokenizer(path)``, whatever its family.
"""

from .base import CaptionTooLongError, Tokenizer
from .bpe import BPETokenizer  # importing a family's module registers it
from .byte import ByteTokenizer
from .registry import available_families, load_tokenizer, register, tokenizer_from_dict

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "CaptionTooLongError",
    "Tokenizer",
    "available_families",
    "load_tokenizer",
    "register",
    "tokenizer_from_dict",
]
