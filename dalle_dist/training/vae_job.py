"""``train_vae.py``: train a DiscreteVAE on a folder of images or the built-in dataset."""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..data import image_grid
from ..errors import UserError
from ..models import DiscreteVAE
from .checkpoint import describe_vae, load_vae, resolve_latest
from .codebook import CodebookUsage
from .config import Parser, add_common_flags, nonneg_int, positive_float, positive_int, refuse
from .job import build_dataset, cli, load_item, prepare_run, run_training, seed_everything, start_backend
from .loop import Task

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
        "--anneal_rate", type=float, default=1e-6, help="temperature = max(start * exp(-rate * step), min)"
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
    m.add_argument("--kl_loss_weight", type=float, default=0.0)
    m.add_argument("--straight_through", action="store_true", help="hard Gumbel-softmax codes")
    return parser


class VAETask(Task):
    kind = "vae"

    def __init__(self, vae: DiscreteVAE, args: argparse.Namespace, data_description: dict[str, Any]) -> None:
        self.model = vae
        self.args = args
        self.data_description = data_description
        self.temperature = args.starting_temp
        self.usage = CodebookUsage(vae.num_tokens)
        self.warned_at: int | None = None
        self.sampling = False
        vae.encoder.register_forward_hook(self._count_codes)

    def _count_codes(self, module: nn.Module, inputs: Any, logits: Tensor) -> None:
        if module.training and not self.sampling:  # training batches only (not sample grids, validation)
            self.usage.update(logits.argmax(dim=1))

    def make_item(self, dataset: Dataset, index: int, rng: random.Random) -> Tensor:
        return load_item(dataset, index, rng)[0]

    def collate(self, items: list[Tensor]) -> Tensor:
        return torch.stack(items)

    def loss(self, model: nn.Module, batch: Tensor, step: int) -> tuple[Tensor, dict[str, float]]:
        a = self.args
        self.temperature = max(a.starting_temp * math.exp(-a.anneal_rate * step), a.temp_min)
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
        images = batch[: self.args.num_images_save]
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


@cli
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse(argv)
    backend = start_backend(args)
    seed_everything(args.seed)
    dataset = build_dataset(args, args.image_folder, backend=backend)
    resume = None
    if args.resume:
        if args.output is None:
            raise UserError("--resume needs --output naming the run directory to continue")
        vae, ckpt = load_vae(resolve_latest(args.output))
        resume = ckpt
    else:
        try:
            vae = DiscreteVAE(
                image_size=args.image_size,
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
    run = prepare_run(args, "train_vae", backend)
    task = VAETask(vae.to(backend.device), args, dataset.describe())
    final = run_training(task, args, backend, run, dataset, resume, epoch_decay=args.lr_decay_rate)
    if backend.is_root and final is not None:
        print(f"VAE trained: {final}")
    backend.shutdown()
