"""The adversarial part of VQGAN training (Esser et al. 2021): a PatchGAN discriminator, the hinge losses and
the adaptive weight that balances the generator's adversarial loss against the reconstruction loss.

The discriminator is pix2pix's PatchGAN (Isola et al. 2017) with group normalisation where Taming uses batch
normalisation: its output is one logit per overlapping patch, and it keeps no running statistics, so ranks
and batch sizes cannot make it differ.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4), channels)


class PatchDiscriminator(nn.Module):
    """``layers`` stride-2 4x4 convolutions (``hidden`` channels, doubling up to 8x), one stride-1 and a
    1-channel stride-1 convolution: images ``[B, C, H, W]`` -> patch logits ``[B, 1, h, w]``."""

    def __init__(self, channels: int = 3, hidden: int = 64, layers: int = 3) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"the discriminator needs at least 1 layer, got {layers}")
        self._config: dict[str, Any] = dict(channels=channels, hidden=hidden, layers=layers)
        blocks: list[nn.Module] = [nn.Conv2d(channels, hidden, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = hidden
        for i in range(1, layers + 1):
            out = hidden * min(2**i, 8)
            stride = 2 if i < layers else 1
            blocks += [nn.Conv2d(width, out, 4, stride, 1, bias=False), _norm(out), nn.LeakyReLU(0.2)]
            width = out
        blocks.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.net = nn.Sequential(*blocks)
        for m in self.modules():  # pix2pix's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.GroupNorm):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def min_image_size(self) -> int:
        """The smallest side it gives at least one patch logit for: ``layers`` halvings, then two 4x4
        convolutions that take one pixel off each."""
        return 3 * 2 ** self._config["layers"]

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def frozen(self, images: Tensor) -> Tensor:
        """Logits through detached weights: the generator's loss flows to the images, never into this
        discriminator (so one backward pass can train both)."""
        weights = {name: p.detach() for name, p in self.named_parameters()}
        return functional_call(self, weights, (images,))


def hinge_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """``mean(relu(1 - D(real))) / 2 + mean(relu(1 + D(fake))) / 2`` (Taming's ``hinge_d_loss``)."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def generator_loss(fake_logits: Tensor) -> Tensor:
    """The generator's hinge loss: ``-mean(D(fake))``."""
    return -fake_logits.mean()


def adaptive_weight(
    reconstruction: Tensor, adversarial: Tensor, last_layer: Tensor, limit: float = 1e4
) -> Tensor:
    """``||grad rec|| / (||grad adv|| + 1e-4)`` at the decoder's last layer, clamped to ``[0, limit]`` and
    detached (Esser et al. 2021, eq. 7): the adversarial gradient is scaled to the reconstruction's."""
    rec_grad = torch.autograd.grad(reconstruction, last_layer, retain_graph=True)[0]
    adv_grad = torch.autograd.grad(adversarial, last_layer, retain_graph=True)[0]
    weight = rec_grad.float().norm() / (adv_grad.float().norm() + 1e-4)
    return weight.clamp(0.0, limit).detach()
