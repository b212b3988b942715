"""``train_clip.py``: train a CLIP (text and image towers, contrastive loss) on the trainers' data
(``checkpoint.load_clip`` reads its checkpoints back for ``generate.py`` and ``evaluate.py``).

The run is the other trainers' run: the same flags, data sources, backends, run directory and resume. The
text goes through the same tokenizer choice as ``train_dalle.py`` (``--bpe_path`` / ``--hug`` /
``--chinese``, else a BPE trained on the captions), and the tokenizer travels in the checkpoint.

The contrastive loss ranks each caption against the images of the whole global batch: under several
ranks the latents are gathered (differentiably: ``backend.gather_rows``), so 2 ranks x b train as 1 x 2b.
With ``--ga_steps`` each micro-batch is its own set of negatives; validation stays per rank.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import load_clip
from ..cli import Parser, check_tokenizer_flags, cli, positive_float, positive_int
from ..data import image_grid
from ..errors import UserError
from ..models import CLIP
from ..text import Tokenizer
from .captions import CaptionTask, caption_tokenizer, check_captions
from .flags import add_caption_data_flags, add_common_flags, backend_config, data_config, refuse_changed_flags
from .job import (
    load_data,
    load_validation,
    parse_flags,
    prepare_run,
    resume_point,
    run_training,
    seed_everything,
    start_backend,
)

KIND = "clip"


def build_parser() -> Parser:
    parser = Parser(prog="train_clip.py", description="Train CLIP (text <-> image contrastive model).")
    add_common_flags(parser, "train_clip")
    src = parser.add_argument_group("inputs")
    add_caption_data_flags(src)

    g = parser.add_argument_group("training")
    g.add_argument(
        "--batch_size",
        type=positive_int,
        default=32,
        help="captions and images per micro-batch: each pair's negatives are the others in it (at least 2)",
    )
    g.add_argument("--learning_rate", type=positive_float, default=3e-4)
    g.add_argument("--clip_grad_norm", type=positive_float, default=None)
    g.add_argument("--lr_decay", action="store_true", help="reduce the learning rate on plateaus")
    g.add_argument(
        "--num_images_save", type=positive_int, default=8, help="images in each retrieval sample grid"
    )

    m = parser.add_argument_group("model (CLIP's constructor arguments; image side: --image_size)")
    m.add_argument("--dim_text", type=positive_int, default=512)
    m.add_argument("--dim_image", type=positive_int, default=512)
    m.add_argument("--dim_latent", type=positive_int, default=512, help="shared embedding dimension")
    m.add_argument("--text_enc_depth", type=positive_int, default=6)
    m.add_argument("--text_seq_len", type=positive_int, default=256)
    m.add_argument("--text_heads", type=positive_int, default=8)
    m.add_argument("--visual_enc_depth", type=positive_int, default=6)
    m.add_argument("--visual_heads", type=positive_int, default=8)
    m.add_argument(
        "--visual_patch_size",
        type=positive_int,
        default=None,
        help="pixels per patch side (default --image_size / 8: an 8 x 8 grid, as CLIP's 256 / 32)",
    )
    m.add_argument("--dim_head", type=positive_int, default=64)
    return parser


class CLIPTask(CaptionTask):
    """Caption + image pairs, the symmetric contrastive loss, retrieval grids as samples."""

    kind = KIND

    def __init__(
        self,
        clip: CLIP,
        tokenizer: Tokenizer,
        meta: dict[str, Any],
        *,
        truncate_captions: bool = False,
        num_images_save: int = 8,
    ) -> None:
        super().__init__(clip, tokenizer, meta, truncate_captions)
        self.num_images_save = num_images_save
        # several ranks: every rank's latents, so the loss contrasts the global batch (the backend's gather)
        self.gather: Callable[[Tensor], tuple[Tensor, int]] | None = None

    def loss(
        self, model: nn.Module, batch: tuple[Tensor, Tensor], step: int
    ) -> tuple[Tensor, dict[str, float]]:
        text, images = batch
        # validation stays per rank: a rank whose shard batch was all broken skips it, and must not stall
        # the others in a collective
        gather = self.gather if model.training else None
        return model(text, images, return_loss=True, gather=gather), {}

    @torch.no_grad()
    def save_samples(self, module: nn.Module, batch: tuple[Tensor, Tensor], step: int, folder: Path) -> Path:
        """The batch's first images, and for each the caption of the batch CLIP ranks first."""
        text, images = (t[: self.num_images_save] for t in batch)
        similarity = module.embed_image(images) @ module.embed_text(text).t()  # [image, caption]
        captions = [self.tokenizer.decode(t) for t in text.tolist()]
        picked = [captions[j] for j in similarity.argmax(dim=1).tolist()]
        # batches repeat captions (the built-in data has few): a pick is right when its text is the same
        right = sum(p == c for p, c in zip(picked, captions, strict=True))
        path = folder / f"clip-step-{step:08d}.png"
        image_grid(images.float().clamp(0, 1).cpu(), nrow=len(images)).save(path)
        lines = [f"{right}/{len(captions)} images ranked their own caption first among these"]
        lines += [f"{i}: {c!r} -> {p!r}" for i, (c, p) in enumerate(zip(captions, picked, strict=True))]
        path.with_suffix(".txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def checkpoint_args(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "meta": {"model": self.model.config(), **self.meta},
            "tokenizer": self.tokenizer,
        }


# the model flags that are CLIP's constructor arguments of the same name
MODEL_FLAGS = (
    "dim_text",
    "dim_image",
    "dim_latent",
    "text_enc_depth",
    "text_seq_len",
    "text_heads",
    "visual_enc_depth",
    "visual_heads",
    "visual_patch_size",
    "dim_head",
)


def _model_kwargs(args: argparse.Namespace, num_text_tokens: int, image_size: int) -> dict[str, Any]:
    """CLIP's constructor arguments from the model flags (the image side is the data's)."""
    return dict(
        dim_text=args.dim_text,
        dim_image=args.dim_image,
        dim_latent=args.dim_latent,
        num_text_tokens=num_text_tokens,
        text_enc_depth=args.text_enc_depth,
        text_seq_len=args.text_seq_len,
        text_heads=args.text_heads,
        visual_enc_depth=args.visual_enc_depth,
        visual_heads=args.visual_heads,
        visual_image_size=image_size,
        visual_patch_size=args.visual_patch_size or max(image_size // 8, 1),
        dim_head=args.dim_head,
    )


@cli
def main(argv: list[str] | None = None) -> None:
    args = parse_flags(build_parser(), argv)
    if args.batch_size < 2:
        raise UserError(
            f"--batch_size {args.batch_size}: the contrastive loss ranks each caption against the other "
            "images of its batch, so a batch needs at least 2 pairs"
        )
    backend = start_backend(backend_config(args))
    seed_everything(args.seed)
    clip, tokenizer, ckpt = None, None, None
    resume = resume_point(args, backend)
    if resume is not None:  # the run's model, sizes and tokenizer; the flags may only confirm them
        clip, tokenizer, ckpt = load_clip(resume)
        check_tokenizer_flags(tokenizer, args, "train_clip.py")
        built = {**ckpt.meta["model"], "image_size": ckpt.meta["model"]["visual_image_size"]}
        refuse_changed_flags(
            args,
            {flag: built[flag] for flag in (*MODEL_FLAGS, "image_size") if flag in built},
            f"--resume continues {args.output} with the CLIP it built",
        )
    data = data_config(args, args.image_text_folder, clip.visual_image_size if clip else None)
    dataset = load_data(data, backend)
    if clip is None:
        tokenizer = caption_tokenizer(args, dataset, backend)
        try:
            clip = CLIP(**_model_kwargs(args, tokenizer.vocab_size, data.image_size))
        except ValueError as e:
            raise UserError(f"--image_size / --visual_patch_size: {e}") from None
    check_captions(dataset, tokenizer, clip.text_seq_len, args.truncate_captions)
    run, flags = prepare_run(args, "train_clip", backend, data, text_seq_len=clip.text_seq_len)
    task = CLIPTask(
        clip.to(backend.device),
        tokenizer,
        {"data": dataset.describe()},
        truncate_captions=args.truncate_captions,
        num_images_save=args.num_images_save,
    )
    if backend.world_size > 1:
        task.gather = backend.gather_rows
    validation = load_validation(args, data, backend)
    final = run_training(task, args, backend, run, flags, dataset, ckpt, validation=validation)
    if backend.is_root and final is not None:
        print(f"CLIP trained: {final}")
    backend.shutdown()
