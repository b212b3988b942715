"""Attention patterns (one mask function each) and the kernels that execute them."""

from .flex import FlexPlan, flex_available, flex_plan
from .kernels import BandPlan, MaskSpec, attention, band_attention, band_plan, reference_attention
from .patterns import PATTERNS, AttentionPattern, Band, SequenceLayout, make_pattern

__all__ = [
    "PATTERNS",
    "AttentionPattern",
    "Band",
    "BandPlan",
    "FlexPlan",
    "MaskSpec",
    "SequenceLayout",
    "attention",
    "band_attention",
    "band_plan",
    "flex_available",
    "flex_plan",
    "make_pattern",
    "reference_attention",
]
