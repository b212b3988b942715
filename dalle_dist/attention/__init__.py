"""Attention patterns (one mask function each), the executors that run them, and the planner that picks an
executor per layer."""

from .flex import FlexPlan, flex_available, flex_plan
from .kernels import AttentionPlan, BandPlan, attention, band_attention, band_plan, reference_attention
from .patterns import PATTERNS, AttentionPattern, Band, SequenceLayout, make_pattern, pattern_options
from .planner import ATTN_IMPLS, AttentionPlanner, check_attn_impl

__all__ = [
    "ATTN_IMPLS",
    "PATTERNS",
    "AttentionPattern",
    "AttentionPlan",
    "AttentionPlanner",
    "Band",
    "BandPlan",
    "FlexPlan",
    "SequenceLayout",
    "attention",
    "band_attention",
    "band_plan",
    "check_attn_impl",
    "flex_available",
    "flex_plan",
    "make_pattern",
    "pattern_options",
    "reference_attention",
]
