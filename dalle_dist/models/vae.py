"""DiscreteVAE: the Gumbel-softmax discrete VAE that turns images into token grids (Ramesh et al. 2021)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# (means, stds) per channel, DALLE-pytorch's default: RGB to [-1, 1], a fourth (alpha) channel untouched
DEFAULT_NORMALIZATION = ((0.5, 0.5, 0.5, 0.0), (0.5, 0.5, 0.5, 1.0))


class ResBlock(nn.Module):
    """Two 3x3 convolutions and a 1x1 projection around a skip connection."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x) + x


class DiscreteVAE(nn.Module):
    """Encoder -> Gumbel-softmax over ``num_tokens`` codes -> codebook mix -> decoder."""

    def __init__(
        self,
        image_size: int = 256,
        num_tokens: int = 512,
        codebook_dim: int = 512,
        num_layers: int = 3,
        num_resnet_blocks: int = 0,
        hidden_dim: int = 64,
        channels: int = 3,
        smooth_l1_loss: bool = False,
        temperature: float = 0.9,
        straight_through: bool = False,
        reinmax: bool = False,
        kl_div_loss_weight: float = 0.0,
        normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = DEFAULT_NORMALIZATION,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        is_power_of_two = image_size > 0 and image_size & (image_size - 1) == 0
        if not is_power_of_two or image_size % 2**num_layers != 0:
            raise ValueError(
                f"image_size must be a power of 2 divisible by 2**num_layers = {2**num_layers}, "
                f"got {image_size} (e.g. {max(2**num_layers, 16)}, 32, 64, 128 or 256)"
            )
        if reinmax:
            raise NotImplementedError("reinmax is not supported; use straight_through=True for hard codes")
        if normalization is not None and (
            len(normalization) != 2 or any(len(v) < channels for v in normalization)
        ):
            raise ValueError(f"normalization must be (means, stds) with at least {channels} entries each")
        self._config: dict[str, Any] = dict(
            image_size=image_size,
            num_tokens=num_tokens,
            codebook_dim=codebook_dim,
            num_layers=num_layers,
            num_resnet_blocks=num_resnet_blocks,
            hidden_dim=hidden_dim,
            channels=channels,
            smooth_l1_loss=smooth_l1_loss,
            temperature=temperature,
            straight_through=straight_through,
            reinmax=reinmax,
            kl_div_loss_weight=kl_div_loss_weight,
            # lists, not tuples, so the config survives a JSON round trip unchanged
            normalization=None if normalization is None else [list(v) for v in normalization],
        )

        self.image_size, self.num_tokens, self.num_layers = image_size, num_tokens, num_layers
        self.channels, self.codebook_dim = channels, codebook_dim
        self.fmap_size = image_size // 2**num_layers
        self.image_seq_len = self.fmap_size**2
        self.temperature, self.straight_through = temperature, straight_through
        self.smooth_l1_loss, self.kl_div_loss_weight = smooth_l1_loss, kl_div_loss_weight

        if normalization is None:
            self.register_buffer("norm_mean", None)
            self.register_buffer("norm_std", None)
        else:
            mean, std = (
                torch.tensor(v[:channels], dtype=torch.float32).view(1, -1, 1, 1) for v in normalization
            )
            self.register_buffer("norm_mean", mean, persistent=False)
            self.register_buffer("norm_std", std, persistent=False)

        self.codebook = nn.Embedding(num_tokens, codebook_dim)
        enc, dec = [], []
        enc_in = channels
        for _ in range(num_layers):
            enc += [nn.Conv2d(enc_in, hidden_dim, 4, stride=2, padding=1), nn.ReLU()]
            enc_in = hidden_dim
        enc += [ResBlock(hidden_dim) for _ in range(num_resnet_blocks)]
        enc.append(nn.Conv2d(hidden_dim, num_tokens, 1))

        dec_in = codebook_dim
        if num_resnet_blocks > 0:
            dec.append(nn.Conv2d(codebook_dim, hidden_dim, 1))
            dec += [ResBlock(hidden_dim) for _ in range(num_resnet_blocks)]
            dec_in = hidden_dim
        for _ in range(num_layers):
            dec += [nn.ConvTranspose2d(dec_in, hidden_dim, 4, stride=2, padding=1), nn.ReLU()]
            dec_in = hidden_dim
        dec.append(nn.Conv2d(hidden_dim, channels, 1))
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serialisable), to rebuild this model."""
        return dict(self._config)

    def norm(self, images: Tensor) -> Tensor:
        """Images in [0, 1] -> the normalised space the networks work in."""
        if self.norm_mean is None:
            return images
        # in the images' dtype: under bf16 weights the fp32 buffers must not promote the input back
        return ((images - self.norm_mean) / self.norm_std).to(images.dtype)

    def denormalize(self, images: Tensor) -> Tensor:
        """The inverse of ``norm``: decoder outputs back to [0, 1] pixels (not clamped)."""
        if self.norm_mean is None:
            return images
        return images * self.norm_std + self.norm_mean

    def _check(self, images: Tensor) -> None:
        expected = (self.channels, self.image_size, self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"images must be [batch, {', '.join(map(str, expected))}], got {tuple(images.shape)}"
            )

    @torch.no_grad()
    def get_codebook_indices(self, images: Tensor) -> Tensor:
        """Token ids ``[B, fmap_size**2]`` of images in [0, 1]."""
        logits = self(images, return_logits=True)
        return logits.argmax(dim=1).flatten(1)

    def decode(self, img_seq: Tensor) -> Tensor:
        """Token ids ``[B, N]`` -> images ``[B, C, H, W]`` in the normalised space."""
        b, n = img_seq.shape
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"expected a square number of image tokens, got {n}")
        codes = self.codebook(img_seq).view(b, side, side, -1).permute(0, 3, 1, 2)
        return self.decoder(codes)

    def forward(
        self,
        img: Tensor,
        return_loss: bool = False,
        return_recons: bool = False,
        return_logits: bool = False,
        temp: float | None = None,
        return_recon_loss: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Reconstruction, or its loss (``return_loss``; early DALLE-pytorch spelled it
        ``return_recon_loss``), or the code logits (``return_logits``)."""
        return_loss = return_loss or return_recon_loss
        self._check(img)
        img = self.norm(img)
        logits = self.encoder(img)
        if return_logits:
            return logits
        soft = F.gumbel_softmax(logits, tau=temp or self.temperature, dim=1, hard=self.straight_through)
        codes = torch.einsum("bnhw,nd->bdhw", soft, self.codebook.weight)
        out = self.decoder(codes)
        if not return_loss:
            return out
        recon = F.smooth_l1_loss(img, out) if self.smooth_l1_loss else F.mse_loss(img, out)
        log_qy = F.log_softmax(logits, dim=1).permute(0, 2, 3, 1).reshape(-1, self.num_tokens)
        log_uniform = torch.full_like(log_qy, -math.log(self.num_tokens))
        # KL(q || uniform), averaged over code positions
        kl = F.kl_div(log_uniform, log_qy, log_target=True, reduction="batchmean")
        loss = recon + self.kl_div_loss_weight * kl
        return (loss, out) if return_recons else loss
