"""Tokenizers: one ``Tokenizer`` interface, one module per family, and a registry to save and load them.

``BPETokenizer.train(captions)`` is the default; ``ByteTokenizer`` needs no training; ``YttmTokenizer``
(YouTokenToMe ``.model``), ``HuggingFaceTokenizer`` (any ``tokenizers`` JSON) and ``ChineseTokenizer``
(BERT, through ``transformers``) wrap other libraries, imported only when used. Any tokenizer ``save``s to
JSON and comes back with ``load_tokenizer(path)``, whatever its family.
"""

from .base import CaptionTooLongError, Tokenizer
from .bpe import BPETokenizer  # importing a family's module registers it
from .byte import ByteTokenizer
from .chinese import ChineseTokenizer
from .hf import HuggingFaceTokenizer
from .registry import available_families, load_tokenizer, register, tokenizer_from_dict
from .yttm import YttmTokenizer

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "CaptionTooLongError",
    "ChineseTokenizer",
    "HuggingFaceTokenizer",
    "Tokenizer",
    "YttmTokenizer",
    "available_families",
    "load_tokenizer",
    "register",
    "tokenizer_from_dict",
]
