"""VQGAN's training objective (Esser et al. 2021) around any DiscreteVAE: reconstruction + an optional
perceptual (LPIPS) term + an optional adversarial game with a PatchGAN discriminator.

The VAE, the discriminator and the (frozen) perceptual network live in one module and one optimizer, so
every engine trains them as it trains anything. One forward computes the VAE's loss plus
``perceptual_weight`` x LPIPS (the "reconstruction" side), the generator's adversarial loss through the
discriminator's detached weights (its gradient reaches only the VAE) scaled by the adaptive weight, and the
discriminator's hinge loss on the real pictures and the detached reconstructions (its gradient reaches
only the discriminator). Before ``start`` the discriminator's loss is multiplied by 0 (it still runs, so
data-parallel engines see every parameter used, and Adam moves nothing on zero gradients) and the
generator's term, which would be multiplied by 0 too, is not computed.
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
from ..models.perceptual import Perceptual

DISCRIMINATOR_FILE = "discriminator.safetensors"


class VQGANObjective(nn.Module):
    """``vae`` with a ``discriminator`` and / or a ``perceptual`` loss; ``forward(images, step)`` returns the
    total loss and its parts (detached)."""

    def __init__(
        self,
        vae: nn.Module,
        discriminator: PatchDiscriminator | None = None,
        start: int = 0,
        weight: float = 0.8,
        perceptual: Perceptual | None = None,
        perceptual_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.vae, self.discriminator, self.perceptual = vae, discriminator, perceptual
        self.start, self.weight, self.perceptual_weight = start, weight, perceptual_weight

    def settings(self) -> dict[str, Any]:
        """What a checkpoint records of the adversarial side (the perceptual network is a file it names)."""
        if self.discriminator is None:
            return {}
        return {"discriminator": self.discriminator.config(), "start": self.start, "weight": self.weight}

    def forward(
        self, images: Tensor, step: int, temp: float | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        vae_loss, recons = self.vae(images, return_loss=True, return_recons=True, temp=temp)
        parts: dict[str, Tensor] = {}
        real = self.vae.norm(images)
        if self.perceptual is not None:
            lpips = self.perceptual(recons, real).mean()
            parts["lpips"] = lpips.detach()
            vae_loss = vae_loss + self.perceptual_weight * lpips
        if self.discriminator is None or not self.training:  # validation: the VAE's side only
            return vae_loss, parts
        d_loss = hinge_discriminator_loss(self.discriminator(real), self.discriminator(recons.detach()))
        parts |= {"vae_loss": vae_loss.detach(), "d_loss": d_loss.detach()}
        if step < self.start:  # the generator's term would be x 0: skip its discriminator pass
            return vae_loss + 0.0 * d_loss, {**parts, "gan_weight": torch.zeros((), device=images.device)}
        g_loss = generator_loss(self.discriminator.frozen(recons))
        if torch.is_grad_enabled():
            balance = adaptive_weight(vae_loss, g_loss, self.vae.last_layer) * self.weight
        else:
            balance = torch.zeros((), device=images.device)
        loss = vae_loss + balance * g_loss + d_loss
        return loss, {**parts, "g_loss": g_loss.detach(), "gan_weight": balance}

    def split_weights(
        self, weights: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]]]:
        """A full state dict -> (the VAE's, {file: weights} of the discriminator); the perceptual network's
        are the files it was read from and are not copied."""
        vae = {k.removeprefix("vae."): v for k, v in weights.items() if k.startswith("vae.")}
        disc = {
            k.removeprefix("discriminator."): v for k, v in weights.items() if k.startswith("discriminator.")
        }
        return vae, ({DISCRIMINATOR_FILE: disc} if disc else {})
