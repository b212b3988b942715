"""Attention patterns (one mask function each) and the kernels that execute them."""

from .kernels import GroupPlan, MaskSpec, attention, group_plan, reference_attention, structured_attention
from .patterns import PATTERNS, AttentionPattern, SequenceLayout, make_pattern

__all__ = [
    "PATTERNS",
    "AttentionPattern",
    "GroupPlan",
    "MaskSpec",
    "SequenceLayout",
    "attention",
    "group_plan",
    "make_pattern",
    "reference_attention",
    "structured_attention",
]
