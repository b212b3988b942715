"""``train_vae.py --gan``: a VAE trained against a PatchGAN discriminator, VQGAN's way (Esser et al. 2021).

Both networks live in one module and one optimizer, so every engine trains them as it trains anything: one
forward computes the reconstruction loss, the generator's adversarial loss through the discriminator's
detached weights (its gradient reaches only the VAE) scaled by the adaptive weight, and the discriminator's
hinge loss on the real images and the detached reconstructions (its gradient reaches only the
discriminator). Before ``start`` both adversarial terms are multiplied by 0 (the discriminator still runs,
so data-parallel engines see every parameter used, and Adam moves nothing on zero gradients).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..models.discriminator import (
    PatchDiscriminator,
    adaptive_weight,
    generator_loss,
    hinge_discriminator_loss,
)
from ..models.vae import DiscreteVAE

DISCRIMINATOR_FILE = "discriminator.safetensors"


class AdversarialVAE(nn.Module):
    """``vae`` and ``discriminator``; ``forward`` returns the total loss and its parts (detached)."""

    def __init__(
        self, vae: DiscreteVAE, discriminator: PatchDiscriminator, start: int = 0, weight: float = 0.8
    ) -> None:
        super().__init__()
        self.vae, self.discriminator = vae, discriminator
        self.start, self.weight = start, weight

    def settings(self) -> dict[str, Any]:
        return {"discriminator": self.discriminator.config(), "start": self.start, "weight": self.weight}

    def forward(
        self, images: Tensor, step: int, temp: float | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        vae_loss, recons = self.vae(images, return_loss=True, return_recons=True, temp=temp)
        if not self.training:  # validation: the VAE's own loss
            return vae_loss, {}
        real = self.vae.norm(images)
        on = step >= self.start
        g_loss = generator_loss(self.discriminator.frozen(recons))
        if on and torch.is_grad_enabled():
            last = self.vae.decoder[-1].weight
            balance = adaptive_weight(vae_loss, g_loss, last) * self.weight
        else:
            balance = torch.zeros((), device=images.device)
        d_loss = hinge_discriminator_loss(self.discriminator(real), self.discriminator(recons.detach()))
        factor = 1.0 if on else 0.0
        loss = vae_loss + factor * balance * g_loss + factor * d_loss
        parts = {"vae_loss": vae_loss.detach(), "g_loss": g_loss.detach(), "d_loss": d_loss.detach()}
        return loss, {**parts, "gan_weight": balance * factor}

    def split_weights(self, weights: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """A full state dict -> (the VAE's, the discriminator's)."""
        vae = {k.removeprefix("vae."): v for k, v in weights.items() if k.startswith("vae.")}
        disc = {
            k.removeprefix("discriminator."): v for k, v in weights.items() if k.startswith("discriminator.")
        }
        return vae, disc
