"""``train_prior.py``: DALL-E 2's diffusion prior (caption -> CLIP image embedding) on a frozen CLIP from
``--clip_path``. Logged beside the loss: the cosine similarity of the predicted embedding to the true one,
and the text embedding's (the baseline); the progress samples write both for sampled embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cli import Flags, cli, positive_int, unit_interval
from ..models.prior import DiffusionPrior
from .diffusion_job import DiffusionTask
from .diffusion_job import build_parser as common_parser
from .diffusion_job import main as train_part

KIND = "prior"


def build_parser():
    parser = common_parser(KIND, "Train DALL-E 2's diffusion prior on a trained CLIP.")
    m = parser.add_argument_group("model")
    m.add_argument("--dim", type=positive_int, default=256)
    m.add_argument("--depth", type=positive_int, default=4)
    m.add_argument("--heads", type=positive_int, default=4)
    m.add_argument("--timesteps", type=positive_int, default=1000, help="diffusion steps in training")
    m.add_argument(
        "--cond_drop_prob", type=unit_interval, default=0.2, help="share of captions dropped (guidance)"
    )
    return parser


def build(clip: nn.Module, args: Flags, image_size: int) -> DiffusionPrior:
    return DiffusionPrior(
        clip,
        dim=args.dim,
        depth=args.depth,
        heads=args.heads,
        timesteps=args.timesteps,
        cond_drop_prob=args.cond_drop_prob,
    )


class PriorTask(DiffusionTask):
    kind = KIND

    def loss(
        self, model: nn.Module, batch: tuple[Tensor, Tensor], step: int
    ) -> tuple[Tensor, dict[str, Any]]:
        text, images, seeds = batch
        return model(text, images, return_parts=True, seeds=seeds)

    @torch.no_grad()
    def save_samples(self, module: nn.Module, batch: tuple[Tensor, Tensor], step: int, folder: Path) -> None:
        """Embeddings sampled for the batch's captions, against their images' (no picture: numbers)."""
        text, images, _ = batch
        sampled = module.sample(text, steps=self.sample_steps)
        text_embed, image_embed = module.clip_embeddings(text, images)
        cosine = F.cosine_similarity(sampled.float(), image_embed.float(), dim=-1).mean()
        baseline = F.cosine_similarity(text_embed.float(), image_embed.float(), dim=-1).mean()
        line = (
            f"step {step}: sampled embeddings vs their images' cosine {cosine:.3f} (the captions' text "
            f"embeddings: {baseline:.3f}), {len(text)} captions, {self.sample_steps} DDIM steps"
        )
        (folder / f"prior-step-{step:08d}.txt").write_text(line + "\n", encoding="utf-8")
        self.log(line)


@cli
def main(argv: list[str] | None = None) -> None:
    train_part(KIND, build_parser(), build, PriorTask, argv)
