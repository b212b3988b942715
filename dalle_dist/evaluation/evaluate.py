"""``evaluate.py``: score generate.py's images with a CLIP, against their prompts and real images.

    python evaluate.py --clip_path RUN --generated OUTPUTS_DIR --real IMAGE_DIR
    python evaluate.py --clip_path hf:openai/clip-vit-base-patch32 ...  # OpenAI's CLIP, the papers' scorer
                       [--feature_model encoder.pt] [--json scores.json]
    python evaluate.py --feature_model encoder.pt --generated OUTPUTS_DIR --real IMAGE_DIR  # FD alone

* CLIP-score of the generated images with their prompts (mean cosine similarity, see ``clip_score``),
  beside its chance level (the same images with the other prompts) and, when the real images have
  captions, the score of real images with their own captions: a CLIP-score means little without both.
* The Fréchet distance between Gaussians fitted to the generated and the real images' features: in the
  CLIP image tower's latent space, and with ``--feature_model`` in that TorchScript encoder's space.
  Without ``--clip_path`` only the feature model's distance is computed (no CLIP-score).
  FD depends on the image counts (it is biased upward for small sets, and a covariance of fewer images
  than feature dimensions is singular): compare figures computed from the same counts only.

``--generated`` is generate.py's layout, ``{dir}/{prompt}/0.png, 1.png, ...`` with ``caption.txt`` (or
one such prompt folder); ``--real`` a folder of images, nested as you like, optionally with same-named
``.txt`` captions (DALLE-pytorch's training layout).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cli import Parser, add_device_flag, cli, output_file, positive_int
from ..data.folder import IMAGE_SUFFIXES, scan_folder
from ..devices import pick_device
from ..errors import UserError
from ..text import Tokenizer
from .clip_score import (
    AnyCLIP,
    image_embeddings,
    image_features,
    load_feature_model,
    load_scoring_clip,
    mismatched_score,
    pair_scores,
    text_embeddings,
    truncated_prompts,
)
from .frechet import frechet_distance_of, set_notes

MIN_IMAGES = 2  # a covariance needs two samples; a full-rank one needs more than its dimensions


@dataclass
class ImageSet:
    """Image files and, per image, its caption(s) (generated: its prompt; real: none or its lines)."""

    root: Path
    images: list[Path]
    captions: list[list[str]]


def build_parser() -> Parser:
    parser = Parser(
        prog="evaluate.py", description="Score generated images: CLIP-score and Fréchet distance."
    )
    parser.add_argument(
        "--clip_path",
        type=Path,
        default=None,
        help="train_clip.py run directory or checkpoint, or a Hugging Face CLIP "
        "(hf:openai/clip-vit-base-patch32, hf:DIR); optional with --feature_model (its distance alone)",
    )
    parser.add_argument(
        "--generated",
        type=Path,
        required=True,
        help="generate.py's --outputs_dir: a folder per prompt with caption.txt and 0.png, 1.png, ...",
    )
    parser.add_argument(
        "--real", type=Path, required=True, help="folder of real images (same-named .txt captions optional)"
    )
    parser.add_argument(
        "--feature_model",
        type=Path,
        default=None,
        help="TorchScript image encoder (torch.jit.script(model).save(file)) taking [B, 3, S, S] in [0, 1] "
        "and returning [B, D]: adds the Fréchet distance in its feature space",
    )
    parser.add_argument(
        "--feature_image_size",
        type=positive_int,
        default=299,
        help="S, the side --feature_model takes (299: Inception v3's)",
    )
    parser.add_argument("--json", type=output_file, default=None, help="also write every figure to this file")
    parser.add_argument("--batch_size", type=positive_int, default=64)
    add_device_flag(parser)
    return parser


def _numbered_images(folder: Path) -> list[Path]:
    return sorted((p for p in folder.glob("*.png") if p.stem.isdigit()), key=lambda p: int(p.stem))


def _check_folder(path: Path, flag: str, what: str) -> None:
    if not path.exists():
        raise UserError(f"{flag} {path} does not exist: pass {what}")
    if not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder: pass {what}")


def read_generated(root: Path) -> ImageSet:
    """generate.py's output folder (or one of its prompt folders): numbered images with their prompt."""
    what = "generate.py's --outputs_dir (a folder per prompt with caption.txt and 0.png, 1.png, ...)"
    _check_folder(root, "--generated", what)
    folders = (
        [root] if (root / "caption.txt").is_file() else sorted(p.parent for p in root.glob("*/caption.txt"))
    )
    images, captions = [], []
    for folder in folders:
        caption = folder / "caption.txt"
        try:
            prompt = caption.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read {caption} ({e}): it must hold the prompt as UTF-8 text") from None
        if not prompt:
            raise UserError(f"{caption} is empty: CLIP-score needs the prompt the images were made from")
        files = _numbered_images(folder)
        images += files
        captions += [[prompt]] * len(files)
    if not images:
        plural = "s" if len(folders) != 1 else ""
        found = f"{len(folders)} prompt folder{plural} with caption.txt but no 0.png, 1.png, ..."
        found = found if folders else "no caption.txt"
        raise UserError(f"--generated {root} holds no generated images ({found}): pass {what}")
    return ImageSet(root, images, captions)


def read_real(root: Path) -> ImageSet:
    """Every image under ``root`` (hidden files skipped), with the lines of its same-named .txt if any."""
    _check_folder(root, "--real", "a folder of real images")
    found, texts = scan_folder(root)
    images, captions = [], []
    for key in sorted(found):
        lines: list[str] = []
        if key in texts:
            try:
                lines = [line.strip() for line in texts[key].read_text(encoding="utf-8").splitlines()]
            except (OSError, UnicodeDecodeError) as e:
                raise UserError(f"cannot read caption file {texts[key]} ({e}): re-save it as UTF-8") from None
        for path in found[key]:
            images.append(path)
            captions.append([line for line in lines if line])
    if not images:
        raise UserError(
            f"--real {root} holds no images ({', '.join(IMAGE_SUFFIXES)}): pass a folder of real images"
        )
    return ImageSet(root, images, captions)


def _check_counts(generated: ImageSet, real: ImageSet) -> None:
    for flag, images in (("--generated", generated), ("--real", real)):
        n = len(images.images)
        if n < MIN_IMAGES:
            raise UserError(
                f"{flag} {images.root} holds {n} image: the Fréchet distance fits a mean and covariance to "
                f"each set, which needs at least {MIN_IMAGES} images (more than the feature dimensions, e.g. "
                "the CLIP's dim_latent, for a full-rank covariance; thousands for a stable figure)"
            )


def _score(
    clip: AnyCLIP, tokenizer: Tokenizer, latents: torch.Tensor, images: ImageSet, batch_size: int, device
) -> dict[str, Any] | None:
    """CLIP-score of the images that have captions (each (image, caption line) pair counts once), with
    its chance level and per-caption means."""
    pairs = [(i, c) for i, lines in enumerate(images.captions) for c in lines]
    if not pairs:
        return None
    distinct = sorted({c for _, c in pairs})
    row = {c: k for k, c in enumerate(distinct)}
    texts = text_embeddings(clip, tokenizer, distinct, batch_size, device)
    image_rows = torch.tensor([i for i, _ in pairs], dtype=torch.long)
    prompt_of = torch.tensor([row[c] for _, c in pairs], dtype=torch.long)
    scores = pair_scores(latents[image_rows], texts, prompt_of)
    per_prompt = {c: float(scores[prompt_of == k].mean()) for c, k in row.items()}
    # the chance level compares each image with the captions that are none of its own (a real image's
    # caption lines all describe it)
    scored = sorted(set(image_rows.tolist()))
    where = {i: r for r, i in enumerate(scored)}
    own = torch.zeros(len(scored), len(distinct), dtype=torch.bool)
    own[[where[i] for i, _ in pairs], prompt_of] = True
    return {
        "value": float(scores.mean()),
        "features": "CLIP image and text latents (cosine similarity)",
        "images": len(scored),
        "pairs": len(pairs),
        "prompts": len(distinct),
        "mismatched_prompts": mismatched_score(latents[scored], texts, own),
        "truncated_prompts": truncated_prompts(clip, tokenizer, distinct),
        "per_prompt": per_prompt,
    }


def _frechet(features: str, generated: np.ndarray, real: np.ndarray) -> dict[str, Any]:
    try:
        value = frechet_distance_of(generated, real)
    except ValueError as e:
        raise UserError(f"Fréchet distance in {features}: {e}") from None
    dim = generated.shape[1]
    notes = set_notes("generated", generated) + set_notes("real", real)
    note = f"{'; '.join(notes)}: the distance is unreliable" if notes else None
    return {
        "value": value,
        "features": features,
        "dim": dim,
        "generated_images": len(generated),
        "real_images": len(real),
        "note": note,
    }


def evaluate(
    clip_path: Path | None,
    generated_dir: Path,
    real_dir: Path,
    feature_model: Path | None = None,
    feature_image_size: int = 299,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Every figure of ``evaluate.py`` as a JSON-serialisable dict (inputs are checked before any work).
    Without ``clip_path`` the CLIP figures are ``None`` and only the feature model's distance is computed."""
    if clip_path is None and feature_model is None:
        raise UserError(
            "nothing to score: give --clip_path (CLIP-score and FD in CLIP latents), --feature_model (FD in "
            "its features), or both"
        )
    generated, real = read_generated(generated_dir), read_real(real_dir)
    _check_counts(generated, real)
    encoder = load_feature_model(feature_model, device) if feature_model is not None else None
    record, clip_score, real_clip_score, frechet = None, None, None, []
    if clip_path is not None:
        clip, tokenizer, record = load_scoring_clip(clip_path)
        clip.to(device).eval()
        gen_latents = image_embeddings(clip, generated.images, batch_size, device)
        real_latents = image_embeddings(clip, real.images, batch_size, device)
        tower = f"CLIP image-tower latents ({record['path']}, unit-norm)"
        frechet.append(_frechet(tower, gen_latents.double().numpy(), real_latents.double().numpy()))
        clip_score = _score(clip, tokenizer, gen_latents, generated, batch_size, device)
        real_clip_score = _score(clip, tokenizer, real_latents, real, batch_size, device)
    if encoder is not None:
        name = f"feature model {feature_model} ({feature_image_size} px input)"
        features = [
            image_features(encoder, s.images, feature_image_size, batch_size, device, name=name)
            for s in (generated, real)
        ]
        frechet.append(_frechet(name, *features))
    return {
        "clip": record,
        "generated": {"dir": str(generated.root), "images": len(generated.images)},
        "real": {
            "dir": str(real.root),
            "images": len(real.images),
            "with_captions": sum(bool(c) for c in real.captions),
        },
        "clip_score": clip_score,
        "real_clip_score": real_clip_score,
        "frechet": frechet,
    }


def _clip_lines(results: dict[str, Any]) -> list[str]:
    clip = results["clip"]
    lines = [f"CLIP: {clip['path']}" + (f" (step {clip['step']})" if clip.get("step") is not None else "")]
    score = results["clip_score"]
    prompts = f"{score['prompts']} prompt" + ("s" if score["prompts"] != 1 else "")
    lines.append(
        f"CLIP-score, generated images vs their prompts: {score['value']:.4f} (mean cosine of CLIP latents; "
        f"{score['images']} generated images, {prompts})"
    )
    if score["mismatched_prompts"] is not None:
        lines.append(
            f"  chance level, the same images vs the other prompts: {score['mismatched_prompts']:.4f}"
        )
    if score["truncated_prompts"]:
        lines.append(
            f"  note: {score['truncated_prompts']} prompts are longer than the CLIP's text context: scored "
            "on their start"
        )
    real = results["real_clip_score"]
    if real is not None:
        chance = real["mismatched_prompts"]
        lines.append(
            f"  reference, real images vs their captions: {real['value']:.4f} ({real['images']} real images, "
            f"{real['pairs']} captions"
            + (f"; vs the other captions: {chance:.4f})" if chance is not None else ")")
        )
    return lines


def report_lines(results: dict[str, Any]) -> list[str]:
    """The figures of ``results`` as the lines ``evaluate.py`` prints, each naming features and counts."""
    lines = _clip_lines(results) if results["clip"] is not None else ["CLIP: none given (no CLIP-score)"]
    for fd in results["frechet"]:
        lines.append(
            f"Fréchet distance, generated vs real, in {fd['features']}, dim {fd['dim']}: {fd['value']:.4f} "
            f"({fd['generated_images']} generated, {fd['real_images']} real images)"
        )
        if fd["note"]:
            lines.append(f"  note: {fd['note']}")
    lines.append("  (Fréchet distances depend on the image counts: compare figures from equal counts only)")
    return lines


@cli
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse(argv)
    if args.json is not None and not args.json.parent.is_dir():
        raise UserError(f"--json {args.json}: the folder {args.json.parent} does not exist")
    results = evaluate(
        args.clip_path,
        args.generated,
        args.real,
        args.feature_model,
        args.feature_image_size,
        args.batch_size,
        pick_device(args.device),
    )
    print("\n".join(report_lines(results)))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"scores written to {args.json}")
