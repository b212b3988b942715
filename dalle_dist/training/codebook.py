"""Codebook usage of a discrete VAE during training: how many codes the encoder picks and how evenly
(perplexity), over the last N batches. A collapsing codebook -- a handful of codes doing all the work --
is a known failure of dVAE training that users watch for."""

from __future__ import annotations

from collections import deque

import torch
from torch import Tensor

COLLAPSED_SHARE = 0.1  # fewer than this share of the codes in use over a full window: warn


class CodebookUsage:
    """Code counts of the last ``window`` batches, kept on the codes' device: counting runs every training
    step and must not wait for a GPU; ``figures`` are tensors the log reads only when it prints."""

    def __init__(self, num_tokens: int, window: int = 100) -> None:
        self.num_tokens = num_tokens
        self.window = window
        self.batches: deque[Tensor] = deque(maxlen=window)
        self.counts = torch.zeros(num_tokens, dtype=torch.long)

    def update(self, codes: Tensor) -> None:
        """Count the codes (any shape of code indices) of one batch."""
        counts = torch.bincount(codes.detach().flatten(), minlength=self.num_tokens)
        self.counts = self.counts.to(counts.device)
        if len(self.batches) == self.batches.maxlen:
            self.counts -= self.batches[0]
        self.batches.append(counts)
        self.counts += counts

    @property
    def full(self) -> bool:
        return len(self.batches) == self.batches.maxlen

    def figures(self) -> dict[str, Tensor]:
        """``codebook_used`` (share of the codes picked at least once in the window) and
        ``codebook_perplexity`` (exp(entropy) of their distribution: 1 when one code does everything,
        num_tokens when uniform; 0 before any batch), as 0-dim tensors: nothing waits for them."""
        used = (self.counts > 0).sum() / self.num_tokens
        p = self.counts.double() / self.counts.sum().clamp(min=1)
        entropy = -(p * p.clamp(min=1e-300).log()).sum()  # unused codes add 0 * log(tiny) = 0
        perplexity = torch.where(self.counts.sum() > 0, entropy.exp(), torch.zeros_like(entropy))
        return {"codebook_used": used, "codebook_perplexity": perplexity}

    def used_share(self) -> float:
        return float(self.figures()["codebook_used"])

    def perplexity(self) -> float:
        return float(self.figures()["codebook_perplexity"])

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
