"""Codebook usage of a discrete VAE during training: how many codes the encoder picks and how evenly
(perplexity), over the last N batches. A collapsing codebook -- a handful of codes doing all the work --
is a known failure of dVAE training that users watch for."""

from __future__ import annotations

from collections import deque

import torch
from torch import Tensor

COLLAPSED_SHARE = 0.1  # fewer than this share of the codes in use over a full window: warn


class CodebookUsage:
    """Code counts of the last ``window`` batches."""

    def __init__(self, num_tokens: int, window: int = 100) -> None:
        self.num_tokens = num_tokens
        self.batches: deque[Tensor] = deque(maxlen=window)
        self.counts = torch.zeros(num_tokens, dtype=torch.long)

    def update(self, codes: Tensor) -> None:
        """Count the codes (any shape of code indices) of one batch."""
        counts = torch.bincount(codes.detach().flatten().cpu(), minlength=self.num_tokens)
        if len(self.batches) == self.batches.maxlen:
            self.counts -= self.batches[0]
        self.batches.append(counts)
        self.counts += counts

    @property
    def full(self) -> bool:
        return len(self.batches) == self.batches.maxlen

    def used_share(self) -> float:
        """Share of the codebook picked at least once in the window."""
        return float((self.counts > 0).sum()) / self.num_tokens

    def perplexity(self) -> float:
        """exp(entropy) of the code distribution: 1 when one code does everything, num_tokens when uniform."""
        total = self.counts.sum()
        if total == 0:
            return 0.0
        p = self.counts[self.counts > 0].double() / total
        return float(torch.exp(-(p * p.log()).sum()))

    def collapse_warning(self, step: int) -> str | None:
        """A warning line when a full window used under ``COLLAPSED_SHARE`` of the codes, else None."""
        if not self.full or self.used_share() >= COLLAPSED_SHARE:
            return None
        used = int((self.counts > 0).sum())
        return (
            f"warning: step {step}: the codebook is collapsing: {used} of {self.num_tokens} codes used in "
            f"the last {len(self.batches)} batches (perplexity {self.perplexity():.1f}); try a higher "
            "--starting_temp, a slower --anneal_rate or a --kl_loss_weight above 0"
        )
