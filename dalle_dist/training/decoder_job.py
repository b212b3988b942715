"""``train_decoder.py``: DALL-E 2's diffusion decoder (CLIP image embedding + caption -> image) on a frozen
CLIP from ``--clip_path``, in pixels or, with ``--autoencoder_path``, in a frozen autoencoder's latents.
Its progress samples decode the CLIP embeddings of real images: the originals above, the decoded below."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..cli import Flags, cli, int_list, nonneg_float, positive_int, unit_interval
from ..data import image_grid
from ..models.decoder import Decoder
from .diffusion_job import DiffusionTask
from .diffusion_job import build_parser as common_parser
from .diffusion_job import main as train_part

KIND = "decoder"


def resolution_list(text: str) -> list[int]:
    """Resolutions as a set, largest first (the order the decoder keeps them in): ``4,8`` on a resume of a
    run given ``8,4`` is the same model."""
    return sorted(set(int_list(text)), reverse=True)


def build_parser():
    parser = common_parser(KIND, "Train DALL-E 2's diffusion decoder on a trained CLIP.")
    m = parser.add_argument_group("model")
    m.add_argument("--dim", type=positive_int, default=64, help="channels at the full resolution")
    m.add_argument("--dim_mults", type=int_list, default=[1, 2, 2], help="channel factors per resolution")
    m.add_argument("--layers_per_block", type=positive_int, default=1)
    m.add_argument("--cond_dim", type=positive_int, default=128, help="width of the context tokens")
    m.add_argument(
        "--attention_head_dim", type=positive_int, default=32, help="channels of each attention head"
    )
    m.add_argument(
        "--attention_resolutions",
        type=resolution_list,
        default=None,
        help="resolutions (px; latent px with --autoencoder_path) with self- and cross-attention, e.g. 16,8 "
        "(default: the lowest)",
    )
    m.add_argument(
        "--norm_groups", type=positive_int, default=None, help="GroupNorm groups (default: 4 channels each)"
    )
    m.add_argument("--num_image_tokens", type=positive_int, default=4, help="context tokens of the embedding")
    m.add_argument("--timesteps", type=positive_int, default=1000, help="diffusion steps in training")
    m.add_argument("--image_cond_drop_prob", type=unit_interval, default=0.1)
    m.add_argument("--text_cond_drop_prob", type=unit_interval, default=0.5)
    m.add_argument(
        "--min_snr_gamma",
        type=nonneg_float,
        default=5.0,
        help="Min-SNR loss weighting: each sample's x0 error times min(SNR, gamma); 0 = the plain loss",
    )
    return parser


def build(clip: nn.Module, args: Flags, image_size: int, autoencoder: nn.Module | None = None) -> Decoder:
    return Decoder(
        clip,
        autoencoder=autoencoder,
        image_size=image_size,
        dim=args.dim,
        dim_mults=tuple(args.dim_mults),
        layers_per_block=args.layers_per_block,
        cond_dim=args.cond_dim,
        attention_head_dim=args.attention_head_dim,
        attention_resolutions=tuple(args.attention_resolutions or ()),
        norm_groups=args.norm_groups,
        num_image_tokens=args.num_image_tokens,
        timesteps=args.timesteps,
        image_cond_drop_prob=args.image_cond_drop_prob,
        text_cond_drop_prob=args.text_cond_drop_prob,
        min_snr_gamma=args.min_snr_gamma,
    )


class DecoderTask(DiffusionTask):
    kind = KIND

    def loss(
        self, model: nn.Module, batch: tuple[Tensor, Tensor], step: int
    ) -> tuple[Tensor, dict[str, Any]]:
        text, images, seeds = batch
        return model(images, text, seeds=seeds), {}

    @torch.no_grad()
    def save_samples(self, module: nn.Module, batch: tuple[Tensor, Tensor], step: int, folder: Path) -> Path:
        text, images = (t[:4] for t in batch[:2])
        decoded = module.sample(module.image_embeddings(images), text, steps=self.sample_steps)
        path = folder / f"decoder-step-{step:08d}.png"
        image_grid(torch.cat([images.float(), decoded.float()]).clamp(0, 1).cpu(), nrow=len(images)).save(
            path
        )
        captions = [self.tokenizer.decode(t) for t in text.tolist()]
        path.with_suffix(".txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
        return path


@cli
def main(argv: list[str] | None = None) -> None:
    train_part(KIND, build_parser(), build, DecoderTask, argv)
