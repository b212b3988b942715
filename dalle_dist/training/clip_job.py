"""``train_clip.py``: train a CLIP (text and image towers, contrastive loss) on the trainers' data, and
``load_clip`` to read its checkpoints back (``evaluate.py --clip_path``).

The run is the other trainers' run: the same flags, data sources, backends, run directory and resume. The
text goes through the same tokenizer choice as ``train_dalle.py`` (``--bpe_path`` / ``--hug`` /
``--chinese``, else a BPE trained on the captions), and the tokenizer travels in the checkpoint.

The contrastive loss sees the negatives of one micro-batch: under several ranks or ``--ga_steps`` each
rank's micro-batch is its own set of negatives (features are not gathered across ranks).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..data import image_grid
from ..errors import UserError
from ..models import CLIP
from ..text import Tokenizer
from ..text.options import check_matches
from .captions import caption_tokenizer, check_captions
from .checkpoint import Checkpoint, load_checkpoint, load_weights, resolve_latest
from .config import Parser, add_caption_data_flags, add_common_flags, positive_float, positive_int
from .job import build_dataset, cli, load_item, prepare_run, run_training, seed_everything, start_backend
from .loop import Task

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


class CLIPTask(Task):
    """Caption + image pairs, the symmetric contrastive loss, retrieval grids as samples."""

    kind = KIND

    def __init__(
        self, clip: CLIP, tokenizer: Tokenizer, args: argparse.Namespace, meta: dict[str, Any]
    ) -> None:
        self.model, self.tokenizer, self.args, self.meta = clip, tokenizer, args, meta

    def make_item(self, dataset: Dataset, index: int, rng: random.Random) -> tuple[Tensor, Tensor]:
        return self.make_sample(*load_item(dataset, index, rng), rng)

    def make_sample(self, image: Tensor, captions: list[str], rng: random.Random) -> tuple[Tensor, Tensor]:
        caption = rng.choice(captions)
        text = self.tokenizer.tokenize(
            [caption], self.args.text_seq_len, truncate_text=self.args.truncate_captions
        )
        return text[0], image

    def collate(self, items: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        return torch.stack([t for t, _ in items]), torch.stack([i for _, i in items])

    def loss(
        self, model: nn.Module, batch: tuple[Tensor, Tensor], step: int
    ) -> tuple[Tensor, dict[str, float]]:
        text, images = batch
        return model(text, images, return_loss=True), {}

    @torch.no_grad()
    def save_samples(self, module: nn.Module, batch: tuple[Tensor, Tensor], step: int, folder: Path) -> Path:
        """The batch's first images, and for each the caption of the batch CLIP ranks first."""
        text, images = (t[: self.args.num_images_save] for t in batch)
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


def load_clip(path: str | Path) -> tuple[CLIP, Tokenizer, Checkpoint]:
    """The trained CLIP and tokenizer of a ``train_clip.py`` checkpoint or run directory."""
    ckpt = load_checkpoint(path, kind=KIND)
    try:
        clip = CLIP(**ckpt.meta["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(
            f"{ckpt.path}/meta.json does not describe a CLIP ({e}): the checkpoint is damaged"
        ) from None
    load_weights(clip, ckpt.weights(), ckpt.path)
    tokenizer = ckpt.tokenizer()
    if tokenizer is None:
        raise UserError(f"{ckpt.path} has no tokenizer.json: the checkpoint is damaged")
    return clip, tokenizer, ckpt


def _model_kwargs(args: argparse.Namespace, num_text_tokens: int) -> dict[str, Any]:
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
        visual_image_size=args.image_size,
        visual_patch_size=args.visual_patch_size or max(args.image_size // 8, 1),
        dim_head=args.dim_head,
    )


@cli
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse(argv)
    if args.batch_size < 2:
        raise UserError(
            f"--batch_size {args.batch_size}: the contrastive loss ranks each caption against the other "
            "images of its batch, so a batch needs at least 2 pairs"
        )
    backend = start_backend(args)
    seed_everything(args.seed)
    clip, tokenizer, resume = None, None, None
    if args.resume:
        if args.output is None:
            raise UserError("--resume needs --output naming the run directory to continue")
        clip, tokenizer, resume = load_clip(resolve_latest(args.output))
        try:  # resumed: the checkpoint's tokenizer and sizes; flags may only confirm them
            check_matches(
                tokenizer, args.bpe_path, args.hug, args.chinese, args.chinese_vocab, "train_clip.py"
            )
        except ValueError as e:
            raise UserError(str(e)) from None
        if args.image_size not in (None, clip.visual_image_size):
            raise UserError(
                f"--image_size {args.image_size} does not match the run's {clip.visual_image_size}: drop it"
            )
        args.image_size, args.text_seq_len = clip.visual_image_size, clip.text_seq_len
    dataset = build_dataset(args, args.image_text_folder, backend=backend)
    if clip is None:
        tokenizer = caption_tokenizer(args, dataset, backend)
        try:
            clip = CLIP(**_model_kwargs(args, tokenizer.vocab_size))
        except ValueError as e:
            raise UserError(f"--image_size / --visual_patch_size: {e}") from None
    check_captions(dataset, tokenizer, args)
    run = prepare_run(args, "train_clip", backend)
    task = CLIPTask(clip.to(backend.device), tokenizer, args, {"data": dataset.describe()})
    final = run_training(task, args, backend, run, dataset, resume)
    if backend.is_root and final is not None:
        print(f"CLIP trained: {final}")
    backend.shutdown()
