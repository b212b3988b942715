"""DALL-E 2's diffusion prior (Ramesh et al. 2022, section 2.1): a caption -> a CLIP image embedding.

A causal transformer reads [caption tokens, CLIP text embedding, timestep, noised image embedding, a
learned query] and predicts the clean image embedding from the query's output. Classifier-free guidance:
the caption and its text embedding are dropped (``cond_drop_prob``) during training. The CLIP it serves is
held frozen inside it, so a prior checkpoint carries its CLIP.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import get_timestep_embedding
from torch import Tensor, nn

from ..attention.cpu_half import explicit_where_faster
from .blocks import blocks_of
from .clip import CLIP
from .diffusion import Diffusion


def clip_sizes(clip: CLIP) -> dict[str, int]:
    """The sizes of a CLIP that a prior or decoder built on it must share."""
    return {
        "image_embed_dim": clip.to_visual_latent.out_features,
        "num_text_tokens": clip.text_emb.num_embeddings,
        "text_seq_len": clip.text_seq_len,
    }


class DiffusionPrior(nn.Module):
    """Text tokens ``[B, L]`` (the CLIP tokenizer's ids) -> unit-norm CLIP image embeddings ``[B, D]``."""

    def __init__(
        self,
        clip: CLIP,
        *,
        dim: int = 256,
        depth: int = 4,
        heads: int = 4,
        timesteps: int = 1000,
        cond_drop_prob: float = 0.2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        if not 0.0 <= cond_drop_prob < 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1), got {cond_drop_prob}")
        self._config = dict(
            dim=dim,
            depth=depth,
            heads=heads,
            timesteps=timesteps,
            cond_drop_prob=cond_drop_prob,
            dropout=dropout,
        )
        sizes = clip_sizes(clip)
        self.embed_dim, self.text_seq_len = sizes["image_embed_dim"], sizes["text_seq_len"]
        # embeddings diffuse at unit variance per dimension: unit-norm vectors scaled by sqrt(D)
        self.embed_scale = self.embed_dim**0.5
        self.dim, self.cond_drop_prob = dim, cond_drop_prob
        self.clip = clip.requires_grad_(False)
        self.diffusion = Diffusion(timesteps, prediction="sample")

        self.token_emb = nn.Embedding(sizes["num_text_tokens"], dim)
        self.pos_emb = nn.Parameter(torch.randn(self.text_seq_len + 4, dim) * 0.02)
        self.pad_emb = nn.Parameter(torch.zeros(dim))  # padding and dropped captions read as this
        self.null_text_embed = nn.Parameter(torch.zeros(self.embed_dim))
        self.text_embed_in = nn.Linear(self.embed_dim, dim)
        self.time_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.image_embed_in = nn.Linear(self.embed_dim, dim)
        self.query = nn.Parameter(torch.randn(dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.to_embed = nn.Linear(dim, self.embed_dim)

    def config(self) -> dict[str, Any]:
        """Constructor arguments besides the CLIP (which checkpoints describe on their own)."""
        return dict(self._config)

    def blocks(self) -> list[nn.Module]:
        """The units ``--compile`` compiles and FSDP shards: the transformer's layers, and the frozen CLIP's
        blocks (it embeds each training batch's captions)."""
        return [*self.transformer.layers, *blocks_of(self.clip)]

    # ------------------------------------------------------------------------------------------- network
    def predict(self, x_t: Tensor, t: Tensor, text: Tensor, text_embed: Tensor, keep: Tensor) -> Tensor:
        """The clean (scaled) image embedding from the noised one ``x_t`` at steps ``t``; rows whose
        ``keep`` is False see no caption (the unconditional model of guidance)."""
        b, length = text.shape
        present = (text != 0) & keep[:, None]
        tokens = torch.where(present[..., None], self.token_emb(text), self.pad_emb)
        text_embed = torch.where(keep[:, None], text_embed, self.null_text_embed)
        time = self.time_mlp(get_timestep_embedding(t, self.dim).to(x_t.dtype))
        extra = torch.stack(
            [self.text_embed_in(text_embed), time, self.image_embed_in(x_t), self.query.expand(b, -1)], dim=1
        )
        seq = torch.cat([tokens, extra], dim=1) + self.pos_emb[: length + 4]
        causal = nn.Transformer.generate_square_subsequent_mask(
            length + 4, device=seq.device, dtype=seq.dtype
        )
        with explicit_where_faster(seq):  # bf16 training on the CPU: see its docstring
            out = self.transformer(seq, mask=causal, is_causal=True)
        return self.to_embed(self.norm(out[:, -1]))

    @torch.no_grad()
    def clip_embeddings(self, text: Tensor, image: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """The frozen CLIP's unit-norm text (and image) embeddings."""
        return self.clip.embed_text(text), None if image is None else self.clip.embed_image(image)

    # -------------------------------------------------------------------------------------------- train
    def forward(
        self,
        text: Tensor,
        image: Tensor | None = None,
        *,
        image_embed: Tensor | None = None,
        return_loss: bool = True,
        return_parts: bool = False,
        seeds: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """The prior's loss for captions ``text`` and their ``image`` ([B, C, H, W] in [0, 1]) or its
        CLIP ``image_embed``. ``return_parts`` adds the cosine similarity of the predicted embedding to
        the true one, and the text embedding's (the baseline a prior must beat). ``seeds`` ``[B]``: each
        sample's noise, step and caption dropout from its own seed (``Diffusion.training_draws``)."""
        if not return_loss:
            raise ValueError("DiffusionPrior(text, image) returns the loss; prior.sample(text) samples")
        text_embed, from_image = self.clip_embeddings(text, image if image_embed is None else None)
        image_embed = from_image if image_embed is None else image_embed
        if image_embed is None:
            raise ValueError("DiffusionPrior needs the captions' images or their image embeddings")
        x0 = image_embed * self.embed_scale
        noise, t, uniforms = self.diffusion.training_draws(x0, 1, seeds)
        keep = uniforms[:, 0] >= (self.cond_drop_prob if self.training else 0.0)
        pred = self.predict(self.diffusion.add_noise(x0, noise, t), t, text, text_embed, keep)
        loss = self.diffusion.loss(pred, x0, noise, t)
        if not return_parts:
            return loss
        with torch.no_grad():
            cosine = F.cosine_similarity(pred.float(), image_embed.float(), dim=-1).mean()
            baseline = F.cosine_similarity(text_embed.float(), image_embed.float(), dim=-1).mean()
        return loss, {"cosine": cosine, "text_cosine": baseline}

    # ------------------------------------------------------------------------------------------- sample
    @torch.no_grad()
    def sample(
        self,
        text: Tensor,
        *,
        cond_scale: float = 1.0,
        steps: int | None = 64,
        sampler: str = "ddim",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Unit-norm CLIP image embeddings ``[B, D]`` for captions ``text`` ``[B, L]``."""
        text_embed, _ = self.clip_embeddings(text)
        b, device = text.shape[0], text.device
        cond = {
            "text": text,
            "text_embed": text_embed,
            "keep": torch.ones(b, dtype=torch.bool, device=device),
        }
        uncond = {**cond, "keep": torch.zeros(b, dtype=torch.bool, device=device)}
        x0 = self.diffusion.sample_guided(
            self.predict, (b, self.embed_dim), cond, uncond, cond_scale=cond_scale, device=device,
            steps=steps, sampler=sampler, generator=generator,
        )  # fmt: skip
        return F.normalize(x0, dim=-1)
