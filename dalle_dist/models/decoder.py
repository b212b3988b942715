"""DALL-E 2's decoder (Ramesh et al. 2022, section 2.1): a CLIP image embedding (and the caption) -> an
image, by diffusion in pixel space, or in the latent space of a frozen ``Autoencoder`` (latent diffusion,
Rombach et al. 2022: ``Decoder(clip, autoencoder=ae)``).

The network is diffusers' ``UNet2DConditionModel`` built from this module's arguments (so a checkpoint is
our JSON + safetensors, nothing pickled): the CLIP image embedding is projected and added to the timestep
embedding, which scales and shifts every residual block's normalised features (AdaGN, the ADM UNet of
Dhariwal & Nichol 2021 that GLIDE and this decoder build on; GroupNorm of at least 4 channels a group),
and also becomes ``num_image_tokens`` context tokens beside the caption's tokens, which the
attention blocks attend to. Attention runs at ``attention_resolutions`` (default: the lowest one): on the
2-core CPU a self- and cross-attention block at 16 px costs more than all the convolutions of a 32 px UNet
(the step is 2.3x faster with attention at 8 px only, measured in bench/RESULTS.md). Classifier-free
guidance: the image embedding is dropped with ``image_cond_drop_prob`` (10 %) and the caption with
``text_cond_drop_prob`` (50 %) during training, as in the paper. The loss is Min-SNR-5 weighted
(``min_snr_gamma``, ``Diffusion.loss``): over three runs on the shapes data it was ahead of the plain loss
on average (guided, about 2x the share of decoded pictures judged right) with a spread wider than that
(bench/RESULTS.md). The frozen CLIP inside gives the image embeddings while
training.

A latent decoder diffuses the autoencoder's normalised latents (16 x 16 for 32 px pictures) with the same
UNet and conditioning, and decodes its samples with the autoencoder. On the built-in shapes it draws the
shapes, corners included, where the pixel decoder at the demo's budget draws ragged blobs
(bench/RESULTS.md, "make demo-dalle2 with the latent decoder"). The autoencoder travels inside the
decoder's checkpoint, like the CLIP.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from diffusers import UNet2DConditionModel
from torch import Tensor, nn

from ..attention.cpu_half import DiffusersAttention
from .autoencoder import Autoencoder
from .blocks import blocks_of
from .clip import CLIP
from .diffusion import Diffusion
from .prior import clip_sizes


def default_norm_groups(dim: int) -> int:
    """GroupNorm groups of at least 4 channels at the full resolution (32 at most): with 1 channel a group
    (32 groups of a 32-wide UNet) each channel loses its mean, the very thing flat-coloured pictures are
    made of."""
    return max(g for g in range(1, 33) if dim % g == 0 and dim // g >= min(4, dim))


def _attention_heads(
    widths: tuple[int, ...],
    resolutions: list[int],
    attention: list[int],
    head_dim: int,
    head_dim_counts_heads: bool,
) -> tuple[int, ...]:
    """Heads at each resolution: the width over ``head_dim`` (``head_dim_counts_heads``: ``head_dim``
    heads everywhere, as checkpoints before 2026-12-07 were built: diffusers' ``attention_head_dim``
    counts heads)."""
    if head_dim_counts_heads:
        return (head_dim,) * len(widths)
    # the middle block attends at the lowest resolution whatever attention_resolutions says
    attending = set(attention) | {resolutions[-1]}
    for width, r in zip(widths, resolutions, strict=True):
        if r in attending and width % head_dim:
            raise ValueError(
                f"attention_head_dim {head_dim} must divide the width {width} at resolution {r}, where the "
                f"UNet attends"
            )
    return tuple(max(1, width // head_dim) for width in widths)


class Decoder(nn.Module):
    """Images ``[B, C, S, S]`` in [0, 1] from unit-norm CLIP image embeddings ``[B, D]`` (and captions);
    with an ``autoencoder`` the UNet works on its latents, and ``dim_mults`` / ``attention_resolutions``
    count in latent pixels."""

    # what arguments added since the first checkpoints meant when they were absent: how those were trained
    LEGACY_DEFAULTS: ClassVar[dict[str, Any]] = {"min_snr_gamma": 0.0, "head_dim_counts_heads": True}

    def __init__(
        self,
        clip: CLIP,
        *,
        autoencoder: Autoencoder | None = None,
        image_size: int | None = None,
        channels: int | None = None,
        dim: int = 64,
        dim_mults: tuple[int, ...] = (1, 2, 2),
        layers_per_block: int = 1,
        cond_dim: int = 128,
        attention_head_dim: int = 32,
        attention_resolutions: tuple[int, ...] | None = None,
        norm_groups: int | None = None,
        num_image_tokens: int = 4,
        timesteps: int = 1000,
        image_cond_drop_prob: float = 0.1,
        text_cond_drop_prob: float = 0.5,
        min_snr_gamma: float = 5.0,
        head_dim_counts_heads: bool = False,
    ) -> None:
        super().__init__()
        if not min_snr_gamma >= 0:
            raise ValueError(f"min_snr_gamma must be >= 0 (0: the plain loss), got {min_snr_gamma}")
        if autoencoder is not None:
            for name, given, its in (
                ("image_size", image_size, autoencoder.image_size),
                ("channels", channels, autoencoder.channels),
            ):
                if given is not None and given != its:
                    raise ValueError(f"{name} {given} does not match the autoencoder's {its}")
            image_size, channels = autoencoder.image_size, autoencoder.channels
            side, unet_channels = autoencoder.latent_size, autoencoder.latent_channels
        else:
            image_size, channels = image_size or 32, channels or 3
            if image_size < 8 or image_size & (image_size - 1):
                raise ValueError(f"image_size must be a power of two >= 8, got {image_size}")
            side, unet_channels = image_size, channels
        what = "latent side" if autoencoder is not None else "image_size"
        if side % 2 ** (len(dim_mults) - 1) or side >> (len(dim_mults) - 1) < 2:
            raise ValueError(f"{what} {side} is too small for {len(dim_mults)} resolutions")
        dim_mults = tuple(dim_mults)
        resolutions = [side >> level for level in range(len(dim_mults))]
        attention = sorted(set(attention_resolutions or resolutions[-1:]), reverse=True)
        if not set(attention) <= set(resolutions):
            raise ValueError(
                f"attention_resolutions {attention} must be among the UNet's resolutions "
                f"{', '.join(map(str, resolutions))}"
            )
        widths = tuple(dim * m for m in dim_mults)
        heads = _attention_heads(widths, resolutions, attention, attention_head_dim, head_dim_counts_heads)
        norm_groups = norm_groups or default_norm_groups(dim)
        if dim % norm_groups:
            raise ValueError(f"norm_groups {norm_groups} must divide dim {dim}")
        self._config = dict(
            image_size=image_size,
            channels=channels,
            dim=dim,
            dim_mults=list(dim_mults),
            layers_per_block=layers_per_block,
            cond_dim=cond_dim,
            attention_head_dim=attention_head_dim,
            attention_resolutions=attention,
            norm_groups=norm_groups,
            num_image_tokens=num_image_tokens,
            timesteps=timesteps,
            image_cond_drop_prob=image_cond_drop_prob,
            text_cond_drop_prob=text_cond_drop_prob,
            min_snr_gamma=min_snr_gamma,
            head_dim_counts_heads=head_dim_counts_heads,
        )
        sizes = clip_sizes(clip)
        self.image_size, self.channels = image_size, channels
        self.unet_size, self.unet_channels = side, unet_channels  # what the UNet diffuses
        self.embed_dim, self.text_seq_len = sizes["image_embed_dim"], sizes["text_seq_len"]
        self.embed_scale = self.embed_dim**0.5
        self.image_cond_drop_prob, self.text_cond_drop_prob = image_cond_drop_prob, text_cond_drop_prob
        self.min_snr_gamma = min_snr_gamma
        self.num_image_tokens, self.cond_dim = num_image_tokens, cond_dim
        self.clip = clip.requires_grad_(False)
        self.autoencoder = None if autoencoder is None else autoencoder.requires_grad_(False)
        self.diffusion = Diffusion(timesteps, prediction="v_prediction")

        down = tuple("CrossAttnDownBlock2D" if r in attention else "DownBlock2D" for r in resolutions)
        up = tuple("CrossAttnUpBlock2D" if r in attention else "UpBlock2D" for r in reversed(resolutions))
        self.unet = UNet2DConditionModel(
            sample_size=side,
            in_channels=unet_channels,
            out_channels=unet_channels,
            block_out_channels=widths,
            layers_per_block=layers_per_block,
            down_block_types=down,
            up_block_types=up,
            mid_block_type="UNetMidBlock2DCrossAttn",
            cross_attention_dim=cond_dim,
            attention_head_dim=heads,  # diffusers' name for the heads at each resolution (its issue 2011)
            norm_num_groups=norm_groups,  # divides every width (all are multiples of dim)
            resnet_time_scale_shift="scale_shift",  # AdaGN: the conditioning scales and shifts each block
            class_embed_type="projection",  # the image embedding, added to the timestep embedding
            projection_class_embeddings_input_dim=self.embed_dim,
        )
        self.unet.set_attn_processor(DiffusersAttention())  # bf16 training on the CPU: see its docstring
        self.token_emb = nn.Embedding(sizes["num_text_tokens"], cond_dim)
        self.text_pos_emb = nn.Parameter(torch.randn(self.text_seq_len, cond_dim) * 0.02)
        self.to_image_tokens = nn.Linear(self.embed_dim, cond_dim * num_image_tokens)
        self.null_image_embed = nn.Parameter(torch.zeros(self.embed_dim))

    def config(self) -> dict[str, Any]:
        """Constructor arguments besides the CLIP and the autoencoder (which checkpoints describe on their
        own)."""
        return dict(self._config)

    def blocks(self) -> list[nn.Module]:
        """The units ``--compile`` compiles and FSDP shards: the UNet's down, middle and up blocks, and the
        frozen CLIP's (and autoencoder's) blocks, which encode each training batch."""
        unet = self.unet
        frozen = [*blocks_of(self.clip), *blocks_of(getattr(self, "autoencoder", None))]
        return [*unet.down_blocks, unet.mid_block, *unet.up_blocks, *frozen]

    # ------------------------------------------------------------------------------------------- network
    def predict(
        self, x_t: Tensor, t: Tensor, image_embed: Tensor, text: Tensor, keep_image: Tensor, keep_text: Tensor
    ) -> Tensor:
        """The network's v-prediction for noised ``x_t`` (images in [-1, 1], or latents) at steps ``t``."""
        b = x_t.shape[0]
        embed = torch.where(keep_image[:, None], image_embed * self.embed_scale, self.null_image_embed)
        image_tokens = self.to_image_tokens(embed).view(b, self.num_image_tokens, self.cond_dim)
        text_tokens = self.token_emb(text) + self.text_pos_emb[: text.shape[1]]
        context = torch.cat([image_tokens, text_tokens], dim=1)
        # padding and dropped captions are masked out; the image tokens are always there to attend to
        mask = torch.cat(
            [
                torch.ones(b, self.num_image_tokens, dtype=torch.bool, device=x_t.device),
                (text != 0) & keep_text[:, None],
            ],
            dim=1,
        )
        return self.unet(
            x_t, t, encoder_hidden_states=context, class_labels=embed, encoder_attention_mask=mask
        ).sample

    @torch.no_grad()
    def image_embeddings(self, images: Tensor) -> Tensor:
        """The frozen CLIP's unit-norm embeddings of ``images`` in [0, 1]."""
        return self.clip.embed_image(images)

    @torch.no_grad()
    def to_unet_space(self, images: Tensor) -> Tensor:
        """What the UNet diffuses for ``images`` in [0, 1]: [-1, 1] pixels, or the autoencoder's latents."""
        return images * 2 - 1 if self.autoencoder is None else self.autoencoder.encode(images)

    def _text(self, text: Tensor | None, b: int, device: torch.device) -> Tensor:
        return torch.zeros(b, 1, dtype=torch.long, device=device) if text is None else text

    # -------------------------------------------------------------------------------------------- train
    def forward(
        self,
        images: Tensor,
        text: Tensor | None = None,
        *,
        image_embed: Tensor | None = None,
        return_loss: bool = True,
        seeds: Tensor | None = None,
    ) -> Tensor:
        """The decoder's loss for ``images`` [B, C, S, S] in [0, 1] (and their captions); ``seeds`` [B]:
        each sample's noise, step and condition dropout from its own seed (``Diffusion.training_draws``)."""
        if not return_loss:
            raise ValueError(
                "Decoder(images, text) returns the loss; decoder.sample(image_embed, text) samples"
            )
        if images.shape[1:] != (self.channels, self.image_size, self.image_size):
            raise ValueError(
                f"the decoder takes images [B, {self.channels}, {self.image_size}, {self.image_size}], got "
                f"{tuple(images.shape)}"
            )
        b, device = images.shape[0], images.device
        image_embed = self.image_embeddings(images) if image_embed is None else image_embed
        text = self._text(text, b, device)
        x0 = self.to_unet_space(images)
        noise, t, uniforms = self.diffusion.training_draws(x0, 2, seeds)
        keep_image = uniforms[:, 0] >= (self.image_cond_drop_prob if self.training else 0.0)
        keep_text = uniforms[:, 1] >= (self.text_cond_drop_prob if self.training else 0.0)
        pred = self.predict(
            self.diffusion.add_noise(x0, noise, t), t, image_embed, text, keep_image, keep_text
        )
        return self.diffusion.loss(pred, x0, noise, t, self.min_snr_gamma)

    # ------------------------------------------------------------------------------------------- sample
    @torch.no_grad()
    def sample(
        self,
        image_embed: Tensor,
        text: Tensor | None = None,
        *,
        cond_scale: float = 1.0,
        steps: int | None = 50,
        sampler: str = "ddim",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Images ``[B, C, S, S]`` in [0, 1] for CLIP image embeddings (and captions); ``cond_scale`` is
        the classifier-free guidance scale (the unconditional model sees neither)."""
        x0 = self.denoise(
            image_embed, text, cond_scale=cond_scale, steps=steps, sampler=sampler, generator=generator
        )
        if self.autoencoder is not None:
            return self.autoencoder.decode(x0.to(self.autoencoder.latent_mean.dtype)).to(image_embed.dtype)
        return ((x0.clamp(-1, 1) + 1) / 2).to(image_embed.dtype)

    @torch.no_grad()
    def denoise(
        self,
        image_embed: Tensor,
        text: Tensor | None = None,
        *,
        cond_scale: float = 1.0,
        steps: int | None = 50,
        sampler: str = "ddim",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``sample``'s x_0 in the space the UNet diffuses, before any conversion to pixels: [-1, 1]
        pixels (unclamped) here, an autoencoder's latents for a latent decoder."""
        b, device = image_embed.shape[0], image_embed.device
        text = self._text(text, b, device)
        yes, no = (
            torch.ones(b, dtype=torch.bool, device=device),
            torch.zeros(b, dtype=torch.bool, device=device),
        )
        cond = {"image_embed": image_embed, "text": text, "keep_image": yes, "keep_text": yes}
        uncond = {**cond, "keep_image": no, "keep_text": no}
        shape = (b, self.unet_channels, self.unet_size, self.unet_size)
        return self.diffusion.sample_guided(
            self.predict, shape, cond, uncond, cond_scale=cond_scale, device=device, steps=steps,
            sampler=sampler, generator=generator,
        )  # fmt: skip
