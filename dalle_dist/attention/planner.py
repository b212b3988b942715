"""Which executor runs each layer's attention: decided once per model and device, apart from the model.

A model names its layers' patterns; the planner turns them into one ``AttentionPlan`` per layer for the
device the model runs on (the split torchtitan makes between a model and its attention backend). Every
plan holds the pattern's dense mask (decode steps and the dense executor read it); for full training
passes it adds the executor that is fastest there:

* ``flex``: FlexAttention with the pattern's block mask (Triton kernels on a GPU; what ``auto`` picks
  when a CUDA device has Triton);
* ``structured``: the band executor, which computes only the pattern's band of keys;
* ``dense``: scaled-dot-product attention under the full mask.

On a CPU ``auto`` picks the faster of the last two, as measured per pattern by
``bench/attention_layers.py`` (bench/RESULTS.md, "Attention executors per pattern on CPU"): the band from
the image lengths in ``AUTO_BAND_MIN_IMAGE_LEN`` on, dense below them and for ``sparse``, whose global
keys make the band wide.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .flex import flex_available, flex_plan
from .kernels import AttentionPlan, band_plan
from .patterns import AttentionPattern

ATTN_IMPLS = ("auto", "flex", "structured", "dense")
AUTO_BAND_MIN_IMAGE_LEN = {"axial_row": 256, "axial_col": 256, "conv_like": 1024}


def check_attn_impl(attn_impl: str) -> str:
    """``attn_impl`` itself, or a ``ValueError`` naming the choices."""
    if attn_impl not in ATTN_IMPLS:
        raise ValueError(f"attn_impl must be one of {', '.join(ATTN_IMPLS)}, got {attn_impl!r}")
    return attn_impl


def executor(attn_impl: str, pattern: AttentionPattern, device: torch.device) -> str:
    """The executor of ``pattern``'s full passes on ``device``: causal, flex, structured or dense."""
    if pattern.band() is None:
        return "causal"  # full attention: causal SDPA is already the best executor
    if attn_impl == "flex" or (attn_impl == "auto" and flex_available(device)):
        return "flex"
    if attn_impl == "auto":
        band_from = AUTO_BAND_MIN_IMAGE_LEN.get(pattern.name, float("inf"))
        return "structured" if pattern.layout.image_len >= band_from else "dense"
    return attn_impl


class AttentionPlanner:
    """One ``AttentionPlan`` per layer for full passes of ``full_pass_len`` positions, on a device.

    The plans of the last device asked for are kept (every training and decode step asks for them); a
    model moved to another device gets plans built there.
    """

    def __init__(
        self, layer_patterns: Sequence[AttentionPattern], full_pass_len: int, attn_impl: str = "auto"
    ) -> None:
        self.layer_patterns = tuple(layer_patterns)
        self.full_pass_len = full_pass_len
        self.attn_impl = check_attn_impl(attn_impl)
        self._built: tuple[torch.device, list[AttentionPlan]] | None = None

    def plans(self, device: torch.device) -> list[AttentionPlan]:
        """Each layer's plan on ``device`` (built on the first call for that device)."""
        if self._built is None or self._built[0] != device:
            by_name = {p.name: self._plan(p, device) for p in self.layer_patterns}
            self._built = (device, [by_name[p.name] for p in self.layer_patterns])
        return self._built[1]

    def _plan(self, pattern: AttentionPattern, device: torch.device) -> AttentionPlan:
        how = executor(self.attn_impl, pattern, device)
        if how == "causal":
            return AttentionPlan(causal=True)
        mask = pattern.dense_mask(device=device)
        if how == "flex":
            return AttentionPlan(mask=mask, flex=flex_plan(pattern, self.full_pass_len, device))
        if how == "structured":
            band = band_plan(pattern, self.full_pass_len)
            return AttentionPlan(mask=mask, band=band.to(device) if band is not None else None)
        return AttentionPlan(mask=mask)
