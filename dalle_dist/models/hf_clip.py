"""A Hugging Face CLIP (OpenAI's ViT-B/32 and its kin) for ranking and scoring: ``--clip_path hf:NAME``.

CLIP-scores from a CLIP trained here compare only with each other; papers report them with OpenAI's CLIP
(minDALL-E on MS-COCO, for one). ``transformers``' ``CLIPModel`` runs the published weights, and its
``CLIPProcessor`` says how they want their input: the tokenizer (BOS, byte-level BPE, EOS, 77 positions)
and the pixels' size, mean and deviation. ``HFCLIP`` and ``HFTokenizer`` give them the few methods
``evaluation.clip_score`` asks of our ``CLIP`` and tokenizers, so ranking and evaluation take either.

``open_clip`` would read the same weights but needs torchvision, whose PyPI wheels do not load beside the
CPU torch. Weights are read from safetensors only (``use_safetensors=True``): nothing pickled runs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError

PREFIX = "hf:"
EXAMPLE = "hf:openai/clip-vit-base-patch32"


def is_hf_clip(spec: str | os.PathLike) -> bool:
    """Whether a ``--clip_path`` names a Hugging Face CLIP (``hf:NAME`` or ``hf:DIR``)."""
    return str(spec).startswith(PREFIX)


class HFTokenizer:
    """A ``transformers`` CLIP tokenizer behind the methods ``clip_score`` calls on our tokenizers."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        """The ids CLIP reads for ``text``, begin and end tokens included, before any truncation."""
        return self.tokenizer(text).input_ids

    def tokenize(self, texts: str | Sequence[str], context_length: int, truncate_text: bool = True) -> Tensor:
        """``[N, context_length]`` ids, padded; longer texts are cut to their first tokens and the end
        token, as OpenAI's CLIP does (``clip_score.truncated_prompts`` counts them)."""
        del truncate_text  # always: the published models were trained on truncated captions
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.tokenizer(
            texts, padding="max_length", max_length=context_length, truncation=True, return_tensors="pt"
        ).input_ids


class HFCLIP(nn.Module):
    """``transformers``' ``CLIPModel`` with our CLIP's embedding methods: unit-norm text and image
    embeddings, images given in [0, 1] at ``visual_image_size`` (the processor's crop)."""

    def __init__(self, model: nn.Module, image_mean: Sequence[float], image_std: Sequence[float], size: int):
        super().__init__()
        self.model = model.eval()
        self.text_seq_len = model.config.text_config.max_position_embeddings
        self.visual_image_size = size
        self.register_buffer("image_mean", torch.tensor(image_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("image_std", torch.tensor(image_std, dtype=torch.float32).view(1, 3, 1, 1))

    @property
    def to_text_latent(self) -> nn.Module:
        return self.model.text_projection

    @property
    def to_visual_latent(self) -> nn.Module:
        return self.model.visual_projection

    @torch.no_grad()
    def embed_text(self, text: Tensor) -> Tensor:
        """Unit-norm embeddings ``[B, D]`` of token ids ``[B, L]`` (``HFTokenizer.tokenize``'s)."""
        return F.normalize(self.model.get_text_features(input_ids=text).pooler_output.float(), dim=-1)

    @torch.no_grad()
    def embed_image(self, images: Tensor) -> Tensor:
        """Unit-norm embeddings ``[B, D]`` of images ``[B, 3, S, S]`` in [0, 1], S = ``visual_image_size``."""
        if images.shape[-2:] != (self.visual_image_size, self.visual_image_size):
            raise ValueError(
                f"this CLIP reads {self.visual_image_size} px images, got {tuple(images.shape[-2:])}"
            )
        pixels = (images.float() - self.image_mean) / self.image_std
        return F.normalize(self.model.get_image_features(pixel_values=pixels).pooler_output.float(), dim=-1)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers warns that it uses its Pillow image processor when torchvision is absent: it always is
    here (torchvision's PyPI wheels do not load beside the CPU torch), so the warning says nothing."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def load_hf_clip(spec: str | os.PathLike) -> tuple[HFCLIP, HFTokenizer]:
    """The CLIP and tokenizer that ``hf:NAME`` (a hub name: the hub when online, its cache otherwise) or
    ``hf:DIR`` (a folder written by ``CLIPModel.save_pretrained`` and ``CLIPProcessor.save_pretrained``)
    names."""
    name = str(spec)[len(PREFIX) :]
    if not name:
        raise UserError(f"--clip_path {spec!r} names no model: write e.g. {EXAMPLE}, or hf:DIR for a folder")
    try:
        from transformers import CLIPModel, CLIPProcessor
    except ImportError:
        raise UserError(
            f"--clip_path {spec} needs transformers: pip install 'dalle_dist[pretrained]'"
        ) from None
    try:
        with _quiet_transformers():
            model = CLIPModel.from_pretrained(name, use_safetensors=True)
            processor = CLIPProcessor.from_pretrained(name)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"cannot load the Hugging Face CLIP {name!r} ({first}): give a hub name such as {EXAMPLE} "
            "(online, or in the hub cache) or hf:DIR, a folder holding CLIPModel.save_pretrained's "
            "model.safetensors and CLIPProcessor.save_pretrained's files"
        ) from None
    images = processor.image_processor
    crop = images.crop_size
    size = crop["height"] if isinstance(crop, dict) else crop.height
    return HFCLIP(model, images.image_mean, images.image_std, int(size)), HFTokenizer(processor.tokenizer)
