"""A continuous image autoencoder for DALL-E 2's decoder to diffuse in (latent diffusion, Rombach et al.
2022): pictures ``[B, C, S, S]`` <-> latents ``[B, latent_channels, S / f, S / f]``, f = 2^(levels - 1).

The network is diffusers' ``AutoencoderKL`` built from this module's arguments (the checkpoint stays our
JSON + safetensors): a convolutional encoder to a diagonal Gaussian posterior, a KL term of weight
``kl_weight`` that keeps the latent space smooth, and a decoder. Latents are handed out normalised to mean
0 (per channel) and standard deviation 1 (one factor for all channels), fitted by ``fit_latent_stats`` on
pictures the trainer chooses: the diffusion schedule assumes data of about unit scale (Stable Diffusion's
``scaling_factor`` does the same with one number).

Why it exists: on the built-in shapes a pixel-space decoder trained for the demo's 12 minutes draws
ragged blobs (25-34 % judged right); the same UNet on this autoencoder's latents, trained for less, draws
the shapes, corners included (65 % end to end). The defaults (one halving: 32 px -> 16 x 16 x 4) keep
small shapes that 8 x 8 latents blur away: round trips judged right 93-95 % against 77-81 % (bench/RESULTS.md,
"make demo-dalle2 with the latent decoder").
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import Tensor, nn

from ..attention.cpu_half import DiffusersAttention

RECON_WEIGHTINGS = ("none", "contrast")
# "contrast": a picture whose pixel variance (in [-1, 1]) is this weighs 1; the built-in shapes' mean is 0.10
CONTRAST_REFERENCE = 0.1
CONTRAST_FLOOR = 1e-3  # a flat picture's weight stays finite (~100)


def contrast_weighted_mse(out: Tensor, target: Tensor) -> Tensor:
    """Each picture's mean squared error divided by its own pixel variance (times ``CONTRAST_REFERENCE``).

    Plain MSE weighs an edge by its squared contrast, so a shape barely lighter than its background (purple
    on gray: 93 RGB levels apart, against ~220 on black or white) teaches the autoencoder little and comes
    back blurred. Dividing by the picture's variance makes a low-contrast picture count as much as a
    high-contrast one; the weight is the picture's own, so a batch split across ranks trains the same."""
    err = (out - target).pow(2).flatten(1).mean(1)
    var = target.flatten(1).var(1)
    return ((CONTRAST_REFERENCE + CONTRAST_FLOOR) / (var + CONTRAST_FLOOR) * err).mean()


def seeded_noise(like: Tensor, seeds: Tensor | None) -> Tensor:
    """Standard normal noise shaped like ``like``: sample i's from generator ``seeds[i]`` where given,
    from the global generator otherwise."""
    if seeds is None:
        return torch.randn_like(like)
    noise = [
        torch.randn(like.shape[1:], generator=torch.Generator().manual_seed(int(s))) for s in seeds.tolist()
    ]
    return torch.stack(noise).to(like)


class Autoencoder(nn.Module):
    """Pictures in [0, 1] <-> normalised latents; ``widths`` gives the channels of each level (one
    halving of the side between levels)."""

    def __init__(
        self,
        *,
        image_size: int = 32,
        channels: int = 3,
        widths: tuple[int, ...] = (32, 64),
        latent_channels: int = 4,
        layers_per_block: int = 1,
        norm_groups: int = 8,
        kl_weight: float = 1e-6,
        mid_attention: bool = True,
        recon_weighting: str = "none",
    ) -> None:
        super().__init__()
        widths = tuple(widths)
        factor = 2 ** (len(widths) - 1)
        if image_size < factor or image_size % factor:
            raise ValueError(f"image_size {image_size} must be a multiple of {factor} ({len(widths)} levels)")
        if any(w % norm_groups for w in widths):
            raise ValueError(
                f"norm_groups {norm_groups} must divide every width {', '.join(map(str, widths))}"
            )
        if not kl_weight >= 0:
            raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
        if recon_weighting not in RECON_WEIGHTINGS:
            raise ValueError(
                f"recon_weighting must be one of {', '.join(RECON_WEIGHTINGS)}, got {recon_weighting!r}"
            )
        self._config = dict(
            image_size=image_size,
            channels=channels,
            widths=list(widths),
            latent_channels=latent_channels,
            layers_per_block=layers_per_block,
            norm_groups=norm_groups,
            kl_weight=kl_weight,
            mid_attention=mid_attention,
            recon_weighting=recon_weighting,
        )
        self.image_size, self.channels, self.kl_weight = image_size, channels, kl_weight
        self.recon_weighting = recon_weighting
        self.latent_channels, self.latent_size = latent_channels, image_size // factor
        self.vae = AutoencoderKL(
            in_channels=channels,
            out_channels=channels,
            down_block_types=("DownEncoderBlock2D",) * len(widths),
            up_block_types=("UpDecoderBlock2D",) * len(widths),
            block_out_channels=widths,
            layers_per_block=layers_per_block,
            latent_channels=latent_channels,
            norm_num_groups=norm_groups,
            sample_size=image_size,
            mid_block_add_attention=mid_attention,
        )
        self.vae.set_attn_processor(DiffusersAttention())  # bf16 training on the CPU: see its docstring
        # identity until fitted: a new autoencoder's latents are what its encoder gives
        self.register_buffer("latent_mean", torch.zeros(1, latent_channels, 1, 1))
        self.register_buffer("latent_std", torch.ones(()))

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serialisable), to rebuild this model."""
        return dict(self._config)

    def blocks(self) -> list[nn.Module]:
        """The units ``--compile`` compiles and FSDP shards: the encoder and the decoder."""
        return [self.vae.encoder, self.vae.decoder]

    def _check(self, images: Tensor) -> None:
        expected = (self.channels, self.image_size, self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            shown = ", ".join(map(str, expected))
            raise ValueError(f"the autoencoder takes images [B, {shown}], got {tuple(images.shape)}")

    def forward(
        self,
        images: Tensor,
        return_loss: bool = True,
        *,
        seeds: Tensor | None = None,
        return_parts: bool = False,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """The training loss of pictures in [0, 1]: MSE of the reconstruction from a posterior sample (in
        [-1, 1]; with ``recon_weighting="contrast"`` each picture's over its contrast,
        ``contrast_weighted_mse``) plus ``kl_weight`` times the KL divergence of the posterior to N(0, I)
        (summed over latent elements, averaged over the batch). With ``seeds`` ``[B]`` each sample's
        posterior draw comes from its own seed, so that 2 ranks x b train as 1 x 2b; ``return_parts`` adds
        the figures (mse, kl, psnr of the reconstruction in dB)."""
        if not return_loss:
            raise ValueError("Autoencoder(images) returns the loss; use encode() and decode()")
        self._check(images)
        x = images * 2 - 1
        posterior = self.vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * seeded_noise(posterior.mean, seeds)
        out, target = self.vae.decode(z).sample.float(), x.float()
        mse = F.mse_loss(out, target)
        rec = mse if self.recon_weighting == "none" else contrast_weighted_mse(out, target)
        kl = posterior.kl().float().mean()
        loss = rec + self.kl_weight * kl if self.kl_weight else rec
        if not return_parts:
            return loss
        # [-1, 1] spans 2: PSNR = 10 log10(2^2 / MSE), the pictures' own in [0, 1]
        parts = {"mse": mse.detach(), "kl": kl.detach(), "psnr": 10 * torch.log10(4 / mse.detach())}
        return loss, parts

    def raw_latents(self, images: Tensor) -> Tensor:
        """The posterior means of pictures in [0, 1], before normalisation."""
        self._check(images)
        return self.vae.encode(images * 2 - 1).latent_dist.mode()

    @torch.no_grad()
    def fit_latent_stats(self, images: Tensor) -> None:
        """Set the normalisation from these pictures: per-channel mean, one standard deviation."""
        z = self.raw_latents(images).float()
        self.latent_mean.copy_(z.mean(dim=(0, 2, 3), keepdim=True))
        self.latent_std.copy_((z - self.latent_mean).std().clamp(min=1e-6))

    def encode(self, images: Tensor) -> Tensor:
        """Normalised latents ``[B, latent_channels, latent_size, latent_size]`` of pictures in [0, 1]."""
        return (self.raw_latents(images) - self.latent_mean) / self.latent_std

    def decode(self, latents: Tensor) -> Tensor:
        """Pictures in [0, 1] (clamped) from normalised latents."""
        x = self.vae.decode(latents * self.latent_std + self.latent_mean).sample
        return ((x + 1) / 2).clamp(0, 1)
