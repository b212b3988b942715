"""Attention patterns (one mask function each) and the kernels that execute them."""

from .kernels import MaskSpec, attention, reference_attention
from .patterns import PATTERNS, AttentionPattern, SequenceLayout, make_pattern

__all__ = [
    "PATTERNS",
    "AttentionPattern",
    "MaskSpec",
    "SequenceLayout",
    "attention",
    "make_pattern",
    "reference_attention",
]
