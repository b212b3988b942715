"""``train_vae.py``: train a DiscreteVAE on a folder of images or the built-in dataset."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import describe_vae, load_vae
from ..cli import Parser, cli, nonneg_float, nonneg_int, positive_float, positive_int, refuse
from ..data import image_grid
from ..errors import UserError
from ..models import DiscreteVAE
from .codebook import CodebookUsage
from .flags import add_common_flags, backend_config, data_config, refuse_changed_flags
from .job import (
    load_data,
    parse_flags,
    prepare_run,
    resume_point,
    run_training,
    seed_everything,
    start_backend,
)
from .task import Task

WARN_EVERY = 500  # steps between repeated codebook-collapse warnings


def build_parser() -> Parser:
    parser = Parser(prog="train_vae.py", description="Train a discrete VAE (image -> tokens).")
    add_common_flags(parser, "train_vae")
    refuse(parser, "--transparent", "RGBA images are not supported yet: convert them to RGB")
    parser.add_argument(
        "--image_folder", type=Path, default=None, help="folder of images (default: built-in)"
    )
    g = parser.add_argument_group("training")
    g.add_argument("--batch_size", type=positive_int, default=8)
    g.add_argument("--learning_rate", type=positive_float, default=1e-3)
    g.add_argument(
        "--lr_decay_rate", type=positive_float, default=0.98, help="learning-rate factor per epoch"
    )
    g.add_argument("--clip_grad_norm", type=positive_float, default=None)
    g.add_argument("--starting_temp", type=positive_float, default=1.0)
    g.add_argument("--temp_min", type=positive_float, default=0.5)
    g.add_argument(
        "--anneal_rate",
        type=nonneg_float,
        default=1e-6,
        help="temperature = max(start * exp(-rate * step), min)",
    )
    g.add_argument(
        "--num_images_save", type=positive_int, default=4, help="images in each reconstruction grid"
    )
    m = parser.add_argument_group("model")
    m.add_argument("--num_tokens", type=positive_int, default=8192, help="codebook size")
    m.add_argument(
        "--num_layers", type=positive_int, default=3, help="downsamplings (2**n smaller token grid)"
    )
    m.add_argument("--num_resnet_blocks", type=nonneg_int, default=2)
    m.add_argument("--smooth_l1_loss", action="store_true")
    m.add_argument("--emb_dim", type=positive_int, default=512, help="codebook dimension")
    m.add_argument("--hidden_dim", type=positive_int, default=256)
    m.add_argument("--kl_loss_weight", type=nonneg_float, default=0.0)
    m.add_argument("--straight_through", action="store_true", help="hard Gumbel-softmax codes")
    return parser


@dataclass(frozen=True)
class Temperature:
    """The Gumbel-softmax temperature: ``max(start * exp(-anneal_rate * step), minimum)``."""

    start: float = 1.0
    minimum: float = 0.5
    anneal_rate: float = 1e-6

    def at(self, step: int) -> float:
        return max(self.start * math.exp(-self.anneal_rate * step), self.minimum)


class VAETask(Task):
    kind = "vae"

    def __init__(
        self,
        vae: DiscreteVAE,
        data_description: dict[str, Any],
        temperature: Temperature,
        num_images_save: int = 4,
    ) -> None:
        self.model = vae
        self.data_description = data_description
        self.schedule, self.num_images_save = temperature, num_images_save
        self.temperature = temperature.start
        self.usage = CodebookUsage(vae.num_tokens)
        self.warned_at: int | None = None
        self.sampling = False
        vae.encoder.register_forward_hook(self._count_codes)

    def _count_codes(self, module: nn.Module, inputs: Any, logits: Tensor) -> None:
        if module.training and not self.sampling:  # training batches only (not sample grids, validation)
            self.usage.update(logits.argmax(dim=1))

    def make_item(self, dataset: Any, index: int, rng: random.Random) -> Tensor:
        return dataset.get(index, rng)[0]

    def collate(self, items: list[Tensor]) -> Tensor:
        return torch.stack(items)

    def loss(self, model: nn.Module, batch: Tensor, step: int) -> tuple[Tensor, dict[str, float]]:
        self.temperature = self.schedule.at(step)
        loss = model(batch, return_loss=True, temp=self.temperature)
        # checked once a window (reading the counts waits for the device), not every step
        if (step + 1) % self.usage.window == 0:
            warning = self.usage.collapse_warning(step + 1)
            if warning and (self.warned_at is None or step - self.warned_at >= WARN_EVERY):
                self.warned_at = step
                self.log(warning)
        return loss, {"temperature": self.temperature, **self.usage.figures()}

    @torch.no_grad()
    def save_samples(self, module: nn.Module, batch: Tensor, step: int, folder: Path) -> Path:
        images = batch[: self.num_images_save]
        self.sampling = True
        try:
            recons = module.denormalize(module.decode(module.get_codebook_indices(images)))
        finally:
            self.sampling = False
        path = folder / f"vae-step-{step:08d}.png"
        image_grid(torch.cat((images, recons.clamp(0, 1))).cpu(), nrow=len(images)).save(path)
        return path

    def checkpoint_args(self) -> dict[str, Any]:
        return {"kind": "vae", "meta": {"vae": describe_vae(self.model), "data": self.data_description}}


# the model flags and the DiscreteVAE config keys they set
FLAG_OF_CONFIG = {
    "image_size": "image_size",
    "num_tokens": "num_tokens",
    "emb_dim": "codebook_dim",
    "num_layers": "num_layers",
    "num_resnet_blocks": "num_resnet_blocks",
    "hidden_dim": "hidden_dim",
    "smooth_l1_loss": "smooth_l1_loss",
    "straight_through": "straight_through",
    "kl_loss_weight": "kl_div_loss_weight",
}


@cli
def main(argv: list[str] | None = None) -> None:
    args = parse_flags(build_parser(), argv)
    backend = start_backend(backend_config(args))
    seed_everything(args.seed)
    data = data_config(args, args.image_folder)
    dataset = load_data(data, backend)
    resume = resume_point(args, backend)
    if resume is not None:
        vae, resume = load_vae(resume)
        built = vae.config()
        refuse_changed_flags(
            args,
            {flag: built[key] for flag, key in FLAG_OF_CONFIG.items() if key in built},
            f"--resume continues {args.output} with the VAE it built",
        )
    else:
        try:
            vae = DiscreteVAE(
                image_size=data.image_size,
                num_tokens=args.num_tokens,
                codebook_dim=args.emb_dim,
                num_layers=args.num_layers,
                num_resnet_blocks=args.num_resnet_blocks,
                hidden_dim=args.hidden_dim,
                smooth_l1_loss=args.smooth_l1_loss,
                temperature=args.starting_temp,
                straight_through=args.straight_through,
                kl_div_loss_weight=args.kl_loss_weight,
            )
        except ValueError as e:
            raise UserError(f"--image_size / --num_layers: {e}") from None
    run, flags = prepare_run(args, "train_vae", backend, data)
    temperature = Temperature(args.starting_temp, args.temp_min, args.anneal_rate)
    task = VAETask(vae.to(backend.device), dataset.describe(), temperature, args.num_images_save)
    final = run_training(task, args, backend, run, flags, dataset, resume, epoch_decay=args.lr_decay_rate)
    if backend.is_root and final is not None:
        print(f"VAE trained: {final}")
    backend.shutdown()
