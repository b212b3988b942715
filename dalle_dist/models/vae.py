"""DiscreteVAE: the discrete VAE that turns images into token grids (Ramesh et al. 2021), with DALL-E's
Gumbel-softmax codebook or one of the quantizers of ``quantizers.py`` between its encoder and decoder."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .quantizers import (
    FiniteScalarQuantizer,
    GumbelQuantizer,
    LookupFreeQuantizer,
    VectorQuantizer,
    resolve_codebook,
)

# (means, stds) per channel, DALLE-pytorch's default: RGB to [-1, 1], a fourth (alpha) channel untouched
DEFAULT_NORMALIZATION = ((0.5, 0.5, 0.5, 0.0), (0.5, 0.5, 0.5, 1.0))

# the constructor arguments only one quantizer reads; a config records those of its own
QUANTIZER_OPTIONS = {
    "gumbel": (),
    "vq": ("vq_codebook_dim", "vq_decay", "kmeans_init", "dead_code_threshold", "commitment_weight"),
    "fsq": (
        "fsq_levels",
        "fsq_symmetric",
        "fsq_noise_dropout",
        "fsq_entropy_weight",
        "fsq_entropy_temperature",
    ),
    "lfq": ("lfq_bits", "entropy_loss_weight", "lfq_temperature", "commitment_weight"),
}


def check_images(images: Tensor, channels: int, image_size: int) -> None:
    """``ValueError`` naming the expected shape unless ``images`` is ``[B, channels, size, size]``."""
    expected = (channels, image_size, image_size)
    if images.dim() != 4 or tuple(images.shape[1:]) != expected:
        raise ValueError(
            f"images must be [batch, {', '.join(map(str, expected))}], got {tuple(images.shape)}"
        )


class ConvStack(nn.Sequential):
    """The encoder's or decoder's layers in order: an ``nn.Sequential`` (DALLE-pytorch's parameter names)
    whose forward is ours, because ``torch.compile`` leaves a bare ``nn.Sequential``'s call uncompiled."""

    def forward(self, x: Tensor) -> Tensor:
        for layer in self:
            x = layer(x)
        return x


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
    """Encoder -> quantizer (``codebook``) -> decoder.

    ``quantizer`` "gumbel" (the default, DALLE-pytorch's): Gumbel-softmax over ``num_tokens`` code logits
    mixing a ``codebook_dim``-wide codebook. "vq": cosine-similarity VQ in a ``vq_codebook_dim``-wide
    projection, EMA updates (``vq_decay``), k-means init, dead-code restarts under ``dead_code_threshold``.
    "fsq": ``fsq_levels`` (codes: their product), levels symmetric about 0 (``fsq_symmetric``, on: it lifts
    the codes used), optional noise dropout (``fsq_noise_dropout``) and an entropy loss that spreads the codes
    (``fsq_entropy_weight`` at ``fsq_entropy_temperature``). "lfq": ``lfq_bits`` sign bits with an
    entropy loss. For fsq / lfq ``num_tokens`` (default 512, or 1 024 for them) picks the levels / bits when
    those are left out. ``commitment_weight`` is vq's and lfq's; the rest mean what DALLE-pytorch's do."""

    def __init__(
        self,
        image_size: int = 256,
        num_tokens: int | None = None,
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
        quantizer: str = "gumbel",
        vq_codebook_dim: int = 16,
        vq_decay: float = 0.9,
        kmeans_init: bool = True,
        dead_code_threshold: float = 0.1,
        commitment_weight: float = 0.25,
        fsq_levels: list[int] | None = None,
        fsq_symmetric: bool = True,
        fsq_noise_dropout: float = 0.0,
        fsq_entropy_weight: float = 0.0,
        fsq_entropy_temperature: float = 0.5,
        lfq_bits: int | None = None,
        entropy_loss_weight: float = 0.15,
        lfq_temperature: float = 0.3,
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
        num_tokens, fsq_levels, lfq_bits = resolve_codebook(quantizer, num_tokens, fsq_levels, lfq_bits)
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
        chosen = dict(
            vq_codebook_dim=vq_codebook_dim,
            vq_decay=vq_decay,
            kmeans_init=kmeans_init,
            dead_code_threshold=dead_code_threshold,
            commitment_weight=commitment_weight,
            fsq_levels=fsq_levels,
            fsq_symmetric=fsq_symmetric,
            fsq_noise_dropout=fsq_noise_dropout,
            fsq_entropy_weight=fsq_entropy_weight,
            fsq_entropy_temperature=fsq_entropy_temperature,
            lfq_bits=lfq_bits,
            entropy_loss_weight=entropy_loss_weight,
            lfq_temperature=lfq_temperature,
        )
        # only the chosen quantizer's options: a Gumbel dVAE's config is what it was before quantizers
        options = {key: chosen[key] for key in QUANTIZER_OPTIONS[quantizer]}
        if quantizer != "gumbel":
            options["quantizer"] = quantizer
        self._config.update(options)

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

        self.quantizer = quantizer
        if quantizer == "gumbel":
            self.codebook: nn.Module = GumbelQuantizer(
                num_tokens, codebook_dim, temperature, straight_through, kl_div_loss_weight
            )
        elif quantizer == "vq":
            self.codebook = VectorQuantizer(
                codebook_dim,
                num_tokens,
                vq_codebook_dim,
                vq_decay,
                commitment_weight,
                kmeans_init,
                dead_code_threshold,
            )
        elif quantizer == "fsq":
            self.codebook = FiniteScalarQuantizer(
                codebook_dim,
                fsq_levels,
                fsq_symmetric,
                fsq_noise_dropout,
                fsq_entropy_weight,
                fsq_entropy_temperature,
            )
        else:
            self.codebook = LookupFreeQuantizer(
                codebook_dim, lfq_bits, entropy_loss_weight, commitment_weight, lfq_temperature
            )
        enc, dec = [], []
        enc_in = channels
        for _ in range(num_layers):
            enc += [nn.Conv2d(enc_in, hidden_dim, 4, stride=2, padding=1), nn.ReLU()]
            enc_in = hidden_dim
        enc += [ResBlock(hidden_dim) for _ in range(num_resnet_blocks)]
        enc.append(nn.Conv2d(hidden_dim, self.codebook.in_channels, 1))

        dec_in = codebook_dim
        if num_resnet_blocks > 0:
            dec.append(nn.Conv2d(codebook_dim, hidden_dim, 1))
            dec += [ResBlock(hidden_dim) for _ in range(num_resnet_blocks)]
            dec_in = hidden_dim
        for _ in range(num_layers):
            dec += [nn.ConvTranspose2d(dec_in, hidden_dim, 4, stride=2, padding=1), nn.ReLU()]
            dec_in = hidden_dim
        dec.append(nn.Conv2d(hidden_dim, channels, 1))
        self.encoder, self.decoder = ConvStack(*enc), ConvStack(*dec)

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serialisable), to rebuild this model."""
        return dict(self._config)

    def blocks(self) -> list[nn.Module]:
        """The units ``--compile`` compiles and FSDP shards: the encoder and the decoder. Not the quantizer:
        the Gumbel one takes a temperature that changes every step (a compiled graph would be specialised to
        each value), and the library ones do not compile under inductor."""
        return [self.encoder, self.decoder]

    @property
    def last_layer(self) -> Tensor:
        """The decoder's last weight (where VQGAN's adaptive weight compares gradients)."""
        return self.decoder[-1].weight

    def norm(self, images: Tensor) -> Tensor:
        """Images in [0, 1] -> the normalised space the networks work in (channels-last when the VAE was
        moved to that memory format, as half-precision training does: its convolutions run faster so)."""
        if self.encoder[0].weight.is_contiguous(memory_format=torch.channels_last):
            images = images.contiguous(memory_format=torch.channels_last)
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
        check_images(images, self.channels, self.image_size)

    @torch.no_grad()
    def get_codebook_indices(self, images: Tensor) -> Tensor:
        """Token ids ``[B, fmap_size**2]`` of images in [0, 1] (nothing is updated, even in training mode)."""
        self._check(images)
        return self.codebook.indices(self.encoder(self.norm(images))).flatten(1)

    def decode(self, img_seq: Tensor) -> Tensor:
        """Token ids ``[B, N]`` -> images ``[B, C, H, W]`` in the normalised space."""
        b, n = img_seq.shape
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"expected a square number of image tokens, got {n}")
        return self.decoder(self.codebook.lookup(img_seq.view(b, side, side)))

    def forward(
        self,
        img: Tensor,
        return_loss: bool = False,
        return_recons: bool = False,
        return_logits: bool = False,
        temp: float | None = None,
        return_recon_loss: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Reconstruction, or its loss (``return_loss``: reconstruction + the quantizer's weighted auxiliary
        loss; early DALLE-pytorch spelled it ``return_recon_loss``), or the Gumbel dVAE's code logits
        (``return_logits``; other quantizers: the encoder's feature map)."""
        return_loss = return_loss or return_recon_loss
        self._check(img)
        img = self.norm(img)
        features = self.encoder(img)
        if return_logits:
            return features
        codes, _, aux_loss = self.codebook(features, temp or self.temperature)
        out = self.decoder(codes)
        if not return_loss:
            return out
        recon = F.smooth_l1_loss(img, out) if self.smooth_l1_loss else F.mse_loss(img, out)
        loss = recon + aux_loss
        return (loss, out) if return_recons else loss
