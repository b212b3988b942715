"""``train_autoencoder.py``: the continuous autoencoder a latent DALL-E 2 decoder diffuses in
(``train_decoder.py --autoencoder_path``), trained on pictures alone.

Each checkpoint's latent normalisation (``Autoencoder.fit_latent_stats``) is measured just before it is
written, on every rank alike, from the first ``--stats_images`` pictures of the data, centre-cropped: the
same pictures every time, so it changes only as the encoder does.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import load_autoencoder
from ..cli import Parser, cli, int_list, nonneg_float, positive_float, positive_int
from ..data import DataError, image_grid
from ..distributed.fsdp import unsharded
from ..errors import UserError
from .flags import add_common_flags, add_picture_data_flags, backend_config, data_config, refuse_changed_flags
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
from .task import Task

KIND = "autoencoder"


def build_parser() -> Parser:
    parser = Parser(
        prog="train_autoencoder.py",
        description="Train the autoencoder a latent DALL-E 2 decoder diffuses in (pictures only).",
    )
    add_common_flags(parser, "train_autoencoder")
    add_picture_data_flags(parser)
    g = parser.add_argument_group("training")
    g.add_argument("--batch_size", type=positive_int, default=32)
    g.add_argument("--learning_rate", type=positive_float, default=5e-4)
    g.add_argument("--clip_grad_norm", type=positive_float, default=1.0)
    g.add_argument(
        "--stats_images",
        type=positive_int,
        default=256,
        help="pictures the latent normalisation is measured on at each checkpoint",
    )
    g.add_argument(
        "--num_images_save", type=positive_int, default=8, help="images in each reconstruction grid"
    )
    m = parser.add_argument_group("model")
    m.add_argument(
        "--widths",
        type=int_list,
        default=[32, 64],
        help="channels per level; the latent side is the image's / 2^(levels - 1)",
    )
    m.add_argument("--latent_channels", type=positive_int, default=4)
    m.add_argument("--layers_per_block", type=positive_int, default=1)
    m.add_argument(
        "--norm_groups", type=positive_int, default=8, help="GroupNorm groups (divide every width)"
    )
    m.add_argument("--kl_weight", type=nonneg_float, default=1e-6, help="weight of the posterior's KL term")
    m.add_argument(
        "--mid_attention",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="self-attention at the latent resolution",
    )
    m.add_argument(
        "--recon_weighting",
        choices=("none", "contrast"),  # models.autoencoder.RECON_WEIGHTINGS (that module loads diffusers)
        default="none",
        help="contrast: each picture's squared error over its pixel variance, so low-contrast shapes are "
        "learned as sharply as high-contrast ones",
    )
    return parser


def stats_pictures(dataset: Any, count: int) -> Tensor:
    """The first ``count`` readable pictures of ``dataset`` (of its first shards, in order, for a stream),
    centre-cropped: alike on every rank."""
    pictures = []
    for picture in _readable_pictures(dataset):
        if len(pictures) == count:
            break
        pictures.append(picture)
    if not pictures:
        raise UserError("no readable picture to measure the latent normalisation on: check the data")
    return torch.stack(pictures)


def _readable_pictures(dataset: Any) -> Iterator[Tensor]:
    """Every readable picture in order, centre-cropped; unreadable ones are skipped, as in training."""
    if dataset.streamed:  # shards: no index, read in order
        for url in dataset.urls:
            # (sample key, picture), or a Skipped slot
            yield from (item[1] for item in dataset.centre_crops(url) if isinstance(item, tuple))
        return
    for index in range(len(dataset)):
        try:
            yield dataset.get(index, None)[0]
        except DataError:
            continue


class AutoencoderTask(Task):
    kind = KIND

    def __init__(
        self, model: nn.Module, data_description: dict[str, Any], stats: Tensor, num_images_save: int = 8
    ) -> None:
        self.model, self.data_description = model, data_description
        self.stats, self.num_images_save = stats, num_images_save

    def make_item(self, dataset: Any, index: int, rng: random.Random) -> tuple[Tensor, Tensor]:
        # the seed makes the sample's posterior draw, whichever rank trains it
        return self.make_sample(dataset.get(index, rng)[0], [], rng)

    def make_sample(self, image: Tensor, captions: list[str], rng: random.Random) -> tuple[Tensor, Tensor]:
        return image, torch.tensor(rng.randrange(2**62), dtype=torch.long)

    def collate(self, items: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        images, seeds = zip(*items, strict=True)
        return torch.stack(images), torch.stack(seeds)

    def loss(
        self, model: nn.Module, batch: tuple[Tensor, Tensor], step: int
    ) -> tuple[Tensor, dict[str, Any]]:
        images, seeds = batch
        return model(images, seeds=seeds, return_parts=True)

    def before_save(self, module: nn.Module) -> None:
        with unsharded(module):  # (FSDP) the encoder runs outside the model's forward
            dtype = next(module.parameters()).dtype  # engines that cast the weights (DeepSpeed bf16)
            module.fit_latent_stats(self.stats.to(module.latent_mean.device, dtype))

    @torch.no_grad()
    def save_samples(self, module: nn.Module, batch: tuple[Tensor, Tensor], step: int, folder: Path) -> Path:
        images = batch[0][: self.num_images_save]
        reconstructed = module.decode(module.encode(images))
        path = folder / f"autoencoder-step-{step:08d}.png"
        image_grid(torch.cat((images.float(), reconstructed.float())).cpu(), nrow=len(images)).save(path)
        return path

    def checkpoint_args(self) -> dict[str, Any]:
        return {"kind": KIND, "meta": {"model": self.model.config(), "data": self.data_description}}


@cli
def main(argv: list[str] | None = None) -> None:
    from ..models.autoencoder import Autoencoder  # diffusers: only when this trainer runs

    args = parse_flags(build_parser(), argv)
    backend = start_backend(backend_config(args))
    seed_everything(args.seed)
    resume = resume_point(args, backend)
    model = None
    if resume is not None:
        model, resume = load_autoencoder(resume)
        built = model.config()
        refuse_changed_flags(
            args,
            {flag: built[flag] for flag in ("image_size", *MODEL_FLAGS) if flag in built},
            f"--resume continues {args.output} with the autoencoder it built",
        )
    data = data_config(args, args.image_folder, None if model is None else model.image_size)
    dataset = load_data(data, backend)
    if model is None:
        try:
            model = Autoencoder(
                image_size=data.image_size, **{flag: getattr(args, flag) for flag in MODEL_FLAGS}
            )
        except ValueError as e:
            raise UserError(f"model flags: {e}") from None
    run, flags = prepare_run(args, "train_autoencoder", backend, data)
    stats = stats_pictures(dataset, args.stats_images)
    task = AutoencoderTask(model.to(backend.device), dataset.describe(), stats, args.num_images_save)
    validation = load_validation(args, data, backend)
    final = run_training(task, args, backend, run, flags, dataset, resume, validation=validation)
    if backend.is_root and final is not None:
        print(f"autoencoder trained: {final}")
    backend.shutdown()


MODEL_FLAGS = (
    "widths",
    "latent_channels",
    "layers_per_block",
    "norm_groups",
    "kl_weight",
    "mid_attention",
    "recon_weighting",
)
