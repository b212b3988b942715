"""DALL-E 2 (Ramesh et al. 2022): CLIP, a diffusion prior (caption -> CLIP image embedding) and a diffusion
decoder (embedding + caption -> image), sampled as one model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .clip import CLIP
from .decoder import Decoder
from .prior import DiffusionPrior


class DALLE2(nn.Module):
    """``DALLE2(clip, prior, decoder)``; ``dalle2(text=..., cf_guidance_scale=2.0)`` -> images in [0, 1].

    Captions may be strings when the model knows its tokenizer (``tokenizer=``, or the one ``load_clip``
    attaches to the CLIP), else token ids ``[B, L]``."""

    def __init__(self, clip: CLIP, prior: DiffusionPrior, decoder: Decoder, tokenizer: Any = None) -> None:
        super().__init__()
        for part, name in ((prior, "prior"), (decoder, "decoder")):
            if part.embed_dim != clip.to_visual_latent.out_features:
                raise ValueError(
                    f"the {name} was built for CLIP embeddings of size {part.embed_dim}, this CLIP's are "
                    f"{clip.to_visual_latent.out_features}: use the CLIP it was trained with"
                )
        self.clip, self.prior, self.decoder = clip, prior, decoder
        self.tokenizer = tokenizer if tokenizer is not None else getattr(clip, "tokenizer", None)

    def val_mode(self) -> DALLE2:
        """Evaluation mode (no dropout) for sampling; returns the model."""
        return self.eval()

    def tokenize(self, text: str | Sequence[str] | Tensor) -> Tensor:
        if isinstance(text, Tensor):
            return text
        if self.tokenizer is None:
            raise ValueError(
                "captions as strings need the CLIP's tokenizer: DALLE2(clip, prior, decoder, tokenizer=...) "
                "or pass token ids"
            )
        return self.tokenizer.tokenize(text, self.prior.text_seq_len, truncate_text=True)

    @torch.no_grad()
    def forward(
        self,
        shape: tuple[int, int, int] | None = None,
        *,
        text: str | Sequence[str] | Tensor,
        cf_guidance_scale: float = 1.0,
        prior_cond_scale: float | None = None,
        steps: int = 50,
        prior_steps: int = 64,
        sampler: str = "ddim",
        generator: torch.Generator | None = None,
        return_image_embeds: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Images ``[B, C, S, S]`` in [0, 1] for the captions ``text``. ``shape`` (C, S, S), when given,
        must be the decoder's; ``cf_guidance_scale`` guides the decoder (and the prior, unless
        ``prior_cond_scale``); ``steps`` / ``prior_steps`` are the samplers' steps."""
        expected = (self.decoder.channels, self.decoder.image_size, self.decoder.image_size)
        if shape is not None and tuple(shape) != expected:
            raise ValueError(f"this decoder makes images of shape {expected}, not {tuple(shape)}")
        device = next(self.decoder.parameters()).device
        tokens = self.tokenize(text).to(device)
        embeds = self.prior.sample(
            tokens,
            cond_scale=cf_guidance_scale if prior_cond_scale is None else prior_cond_scale,
            steps=prior_steps,
            sampler=sampler,
            generator=generator,
        )
        images = self.decoder.sample(
            embeds, tokens, cond_scale=cf_guidance_scale, steps=steps, sampler=sampler, generator=generator
        )
        return (images, embeds) if return_image_embeds else images
