"""CLIP (Radford et al. 2021): a text encoder and an image encoder trained to agree; used to rank samples."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention import AttentionPlan
from .transformer import Transformer


class CLIP(nn.Module):
    """Contrastive text-image model with DALLE-pytorch's constructor arguments."""

    def __init__(
        self,
        *,
        dim_text: int = 512,
        dim_image: int = 512,
        dim_latent: int = 512,
        num_text_tokens: int = 10000,
        text_enc_depth: int = 6,
        text_seq_len: int = 256,
        text_heads: int = 8,
        num_visual_tokens: int = 512,
        visual_enc_depth: int = 6,
        visual_heads: int = 8,
        visual_image_size: int = 256,
        visual_patch_size: int = 32,
        channels: int = 3,
        dim_head: int = 64,
        logit_scale_init: float = 1 / 0.07,
    ) -> None:
        super().__init__()
        if logit_scale_init <= 0:
            raise ValueError(f"logit_scale_init must be positive, got {logit_scale_init}")
        if visual_image_size % visual_patch_size != 0:
            raise ValueError(
                f"visual_image_size {visual_image_size} must be divisible by "
                f"visual_patch_size {visual_patch_size}"
            )
        self._config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.text_seq_len, self.visual_image_size = text_seq_len, visual_image_size
        self.patch_size, self.channels = visual_patch_size, channels
        num_patches = (visual_image_size // visual_patch_size) ** 2
        # num_visual_tokens is kept for DALLE-pytorch compatibility: images enter as pixel patches

        self.text_emb = nn.Embedding(num_text_tokens, dim_text)
        self.text_pos_emb = nn.Embedding(text_seq_len, dim_text)
        self.text_transformer = Transformer(
            dim=dim_text, depth=text_enc_depth, heads=text_heads, dim_head=dim_head
        )
        self.text_norm = nn.LayerNorm(dim_text)
        self.to_text_latent = nn.Linear(dim_text, dim_latent, bias=False)

        self.to_patch = nn.Linear(channels * visual_patch_size**2, dim_image)
        self.visual_pos_emb = nn.Embedding(num_patches, dim_image)
        # ViT's 0.02 (Dosovitskiy et al. 2021), not nn.Embedding's 1: position noise 2-3x the patches' own
        # signal kept a small CLIP from learning where edges are, so from telling a square from a circle
        nn.init.normal_(self.visual_pos_emb.weight, std=0.02)
        self.visual_transformer = Transformer(
            dim=dim_image, depth=visual_enc_depth, heads=visual_heads, dim_head=dim_head
        )
        self.visual_norm = nn.LayerNorm(dim_image)
        self.to_visual_latent = nn.Linear(dim_image, dim_latent, bias=False)

        # the log of the similarities' scale, learned. It starts at CLIP's 1 / 0.07 (Radford et al. 2021),
        # not DALLE-pytorch's e^1 = 2.7: at that scale a batch's softmax cannot be sharp, and on the built-in
        # shapes a CLIP trained 1 200 steps told shapes apart no better than chance (39 %; colours 100 %).
        # A 1-element vector, not a 0-dim tensor: DeepSpeed's engine views every parameter as bytes to
        # broadcast it, which a 0-dim tensor cannot be.
        self.temperature = nn.Parameter(torch.tensor([math.log(logit_scale_init)]))

    def config(self) -> dict:
        """Constructor arguments, to rebuild this model."""
        return dict(self._config)

    def blocks(self) -> list[nn.Module]:
        """The units ``--compile`` compiles and FSDP shards: both transformers' branches."""
        return [*self.text_transformer.blocks(), *self.visual_transformer.blocks()]

    def embed_text(self, text: Tensor, text_mask: Tensor | None = None) -> Tensor:
        """Unit-norm text latents ``[B, dim_latent]``; padding (0, or False in ``text_mask``) is ignored."""
        if text.shape[1] > self.text_seq_len:
            raise ValueError(f"text has {text.shape[1]} tokens, CLIP takes at most {self.text_seq_len}")
        mask = text != 0 if text_mask is None else text_mask.bool()
        mask = mask.clone()
        mask[:, 0] = True  # an all-padding caption still attends somewhere
        x = self.text_emb(text) + self.text_pos_emb.weight[: text.shape[1]]
        x = self.text_norm(self.text_transformer(x, AttentionPlan(key_padding=mask)))
        weights = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * weights).sum(dim=1) / weights.sum(dim=1)
        return F.normalize(self.to_text_latent(pooled), dim=-1)

    def embed_image(self, image: Tensor) -> Tensor:
        """Unit-norm image latents ``[B, dim_latent]`` from pixels ``[B, C, H, W]``."""
        size, p = self.visual_image_size, self.patch_size
        if image.shape[1:] != (self.channels, size, size):
            if image.shape[1] == self.channels and image.shape[-1] != size:
                image = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)
            else:
                raise ValueError(
                    f"CLIP takes images [B, {self.channels}, {size}, {size}], got {tuple(image.shape)}"
                )
        b = image.shape[0]
        patches = image.unfold(2, p, p).unfold(3, p, p)  # [B, C, h, w, p, p]
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(b, -1, self.channels * p * p)
        x = self.to_patch(patches) + self.visual_pos_emb.weight
        x = self.visual_norm(self.visual_transformer(x, AttentionPlan()))
        return F.normalize(self.to_visual_latent(x.mean(dim=1)), dim=-1)

    def forward(
        self,
        text: Tensor,
        image: Tensor,
        text_mask: Tensor | None = None,
        return_loss: bool = False,
        gather: Callable[[Tensor], tuple[Tensor, int]] | None = None,
    ) -> Tensor:
        """Scaled similarity of each (text, image) pair ``[B]``, or the symmetric contrastive loss.

        ``gather`` (training on several processes) returns every process's rows of a tensor, in order and
        differentiable, and where this one's start: each caption is then ranked against the images of the
        whole global batch, not of this process's share, so W processes x B pairs train as 1 x W*B."""
        text_latents, image_latents = self.embed_text(text, text_mask), self.embed_image(image)
        scale = self.temperature.exp()
        if not return_loss:
            return (text_latents * image_latents).sum(dim=-1) * scale
        all_text, all_images, first = text_latents, image_latents, 0
        if gather is not None:
            (all_text, first), (all_images, _) = gather(text_latents), gather(image_latents)
        labels = torch.arange(first, first + text.shape[0], device=text.device)
        text_to_images = text_latents @ all_images.t() * scale  # this process's captions, every image
        image_to_texts = image_latents @ all_text.t() * scale
        return (F.cross_entropy(text_to_images, labels) + F.cross_entropy(image_to_texts, labels)) / 2
