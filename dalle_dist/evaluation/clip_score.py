"""CLIP-score and image features for the Fréchet distance, from a CLIP or a TorchScript image encoder.

CLIP-score here is the plain mean cosine similarity, in [-1, 1], between each image's embedding and its
prompt's, both from one CLIP: one of ours (``train_clip.py``), or a Hugging Face one such as OpenAI's
ViT-B/32 (``hf:openai/clip-vit-base-patch32``, ``models/hf_clip.py``), the CLIP papers report with. It is
not Hessel et al.'s ``2.5 * max(cos, 0)`` nor torchmetrics' ``100 * max(cos, 0)``: compare figures only
between runs scored by the same CLIP, which every record names.

Images are given as a tensor ``[N, 3, H, W]`` in [0, 1] or as files, read a batch at a time with the
largest centred square resized (bicubic) to the encoder's side (no random crop), and encoded without
gradients.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..checkpoint import load_clip
from ..data import load_image
from ..errors import UserError
from ..models import CLIP
from ..models.hf_clip import HFCLIP, HFTokenizer, is_hf_clip, load_hf_clip
from ..text import Tokenizer

Images = Tensor | Sequence[Path]
AnyCLIP = CLIP | HFCLIP


def load_scoring_clip(spec: str | Path) -> tuple[AnyCLIP, Tokenizer | HFTokenizer, dict[str, Any]]:
    """The CLIP a ``--clip_path`` names, its tokenizer and a record of what it is: a ``train_clip.py`` run
    or checkpoint, or ``hf:NAME`` / ``hf:DIR`` (a Hugging Face CLIP)."""
    if is_hf_clip(spec):
        clip, tokenizer = load_hf_clip(spec)
        return clip, tokenizer, {"path": str(spec), "step": None, "data": None, "source": "Hugging Face"}
    clip, tokenizer, ckpt = load_clip(spec)
    record = {
        "path": str(ckpt.path),
        "step": ckpt.step,
        "data": ckpt.meta.get("data"),
        "source": "train_clip.py",
    }
    return clip, tokenizer, record


def image_batches(images: Images, image_size: int, batch_size: int) -> Iterator[Tensor]:
    """``images`` in batches of ``[b, 3, image_size, image_size]``; files are read one batch at a time."""
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        if isinstance(chunk, Tensor):
            if chunk.shape[-2:] != (image_size, image_size):
                # bicubic, as files are read (and as CLIP's own processor resizes); it overshoots: clamped
                chunk = F.interpolate(
                    chunk, size=(image_size, image_size), mode="bicubic", align_corners=False, antialias=True
                ).clamp(0, 1)
            yield chunk
            continue
        loaded = []
        for path in chunk:
            try:
                loaded.append(load_image(path, image_size))
            except Exception as e:  # Pillow raises many types for broken files
                raise UserError(
                    f"cannot read image {path} ({type(e).__name__}: {e}): replace or remove it"
                ) from None
        yield torch.stack(loaded)


@torch.no_grad()
def text_embeddings(
    clip: AnyCLIP,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Unit-norm CLIP embeddings ``[len(prompts), dim_latent]`` (CPU); prompts longer than the CLIP's
    text context are cut to it (``truncated_prompts`` counts them)."""
    clip.eval()
    out = []
    for start in range(0, len(prompts), batch_size):
        text = tokenizer.tokenize(prompts[start : start + batch_size], clip.text_seq_len, truncate_text=True)
        out.append(clip.embed_text(text.to(device)).float().cpu())
    return torch.cat(out) if out else torch.empty(0, clip.to_text_latent.out_features)


def truncated_prompts(clip: AnyCLIP, tokenizer: Tokenizer, prompts: Sequence[str]) -> int:
    """How many of ``prompts`` have more tokens than ``clip`` reads (they are scored on their start)."""
    return sum(len(tokenizer.encode(p)) > clip.text_seq_len for p in prompts)


@torch.no_grad()
def image_embeddings(
    clip: AnyCLIP, images: Images, batch_size: int = 64, device: str | torch.device = "cpu"
) -> Tensor:
    """Unit-norm CLIP image-tower embeddings ``[N, dim_latent]`` (CPU)."""
    clip.eval()
    out = [
        clip.embed_image(batch.to(device)).float().cpu()
        for batch in image_batches(images, clip.visual_image_size, batch_size)
    ]
    return torch.cat(out) if out else torch.empty(0, clip.to_visual_latent.out_features)


def clip_scores(
    clip: AnyCLIP,
    tokenizer: Tokenizer,
    images: Images,
    prompts: Sequence[str],
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Cosine similarity ``[N]`` of each image with its prompt (``prompts[i]`` belongs to image ``i``)."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts: give one prompt per image")
    # each distinct prompt is encoded once (generate.py writes many images per prompt)
    distinct = sorted(set(prompts))
    row = {p: i for i, p in enumerate(distinct)}
    texts = text_embeddings(clip, tokenizer, distinct, batch_size, device)
    images = image_embeddings(clip, images, batch_size, device)
    return pair_scores(images, texts, torch.tensor([row[p] for p in prompts], dtype=torch.long))


def pair_scores(image_latents: Tensor, text_latents: Tensor, prompt_of: Tensor) -> Tensor:
    """Cosine similarity ``[N]`` of unit-norm image latents ``[N, D]`` with the text latents ``[K, D]``
    of their prompts (``prompt_of[i]`` indexes image ``i``'s)."""
    return (image_latents * text_latents[prompt_of]).sum(dim=-1)


def mismatched_score(image_latents: Tensor, text_latents: Tensor, own: Tensor) -> float | None:
    """The chance level of CLIP-score: the mean cosine similarity of each image with the prompts that are
    not its own (``own [N, K]`` marks each image's), averaged per image, then over images; None when no
    image has a prompt that is not its own."""
    others = ~own.bool()
    keep = others.any(dim=1)
    if not keep.any():
        return None
    similarity = image_latents[keep] @ text_latents.t()  # [N, K]
    others = others[keep].to(similarity.dtype)
    return float(((similarity * others).sum(dim=1) / others.sum(dim=1)).mean())


def clip_score(
    clip: AnyCLIP,
    tokenizer: Tokenizer,
    images: Images,
    prompts: Sequence[str],
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> float:
    """CLIP-score: the mean cosine similarity of the images with their prompts."""
    return float(clip_scores(clip, tokenizer, images, prompts, batch_size, device).mean())


def load_feature_model(path: str | Path, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """A TorchScript image encoder (``torch.jit.script(model).save(path)``). ``torch.jit.load`` reads
    TorchScript code and tensors, not pickled Python objects: loading runs nothing from the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"feature model {path} does not exist: pass a TorchScript file")
    try:
        with warnings.catch_warnings():
            # torch >= 2.9 marks TorchScript deprecated; the warning is for whoever chose it, not for
            # each evaluation (the file format is what pretrained Inception / CLIP exports come in)
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*", category=DeprecationWarning)
            model = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"feature model {path} is not a TorchScript file ({first}): save one with "
            "torch.jit.script(model).save(path) or torch.jit.trace(model, example).save(path)"
        ) from None
    return model.eval()


@torch.no_grad()
def image_features(
    encode: Callable[[Tensor], Tensor],
    images: Images,
    image_size: int,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    name: str = "the feature model",
) -> np.ndarray:
    """``encode``'s features ``[N, D]`` (float64) of ``images`` fed as ``[b, 3, image_size, image_size]``
    in [0, 1]; outputs ``[b, D, 1, 1]`` (pooled convolution maps) and the like are flattened."""
    out = []
    for batch in image_batches(images, image_size, batch_size):
        features = encode(batch.to(device))
        if not isinstance(features, Tensor) or features.dim() < 2 or features.shape[0] != len(batch):
            got = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise UserError(
                f"{name} returned {got} for a batch of {len(batch)} images: it must return one feature "
                "vector per image, a tensor [B, D]"
            )
        out.append(features.flatten(1).double().cpu().numpy())
    return np.concatenate(out) if out else np.empty((0, 0))


def clip_image_features(
    clip: CLIP, images: Images, batch_size: int = 64, device: str | torch.device = "cpu"
) -> np.ndarray:
    """The CLIP image tower's unit-norm embeddings as Fréchet-distance features ``[N, dim_latent]``."""
    return image_embeddings(clip, images, batch_size, device).double().numpy()
