"""``train_vae.py``: train a DiscreteVAE on a folder of images or the built-in dataset."""

from __future__ import annotations

import argparse
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import Checkpoint, describe_vae, load_vae, load_weights
from ..cli import (
    Parser,
    cli,
    fraction,
    int_list,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    refuse,
    str_list,
)
from ..data import image_grid
from ..errors import UserError
from ..models import DiscreteVAE
from ..models.discriminator import PatchDiscriminator
from ..models.perceptual import Perceptual
from ..models.pretrained import trainable_vqgan
from ..models.quantizers import QUANTIZERS, GumbelQuantizer, Quantized, resolve_codebook
from ..models.vqgan import VQGAN
from .codebook import CodebookUsage
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
from .vqgan_objective import DISCRIMINATOR_FILE, VQGANObjective

WARN_EVERY = 500  # steps between repeated codebook-collapse warnings


def build_parser() -> Parser:
    parser = Parser(prog="train_vae.py", description="Train a discrete VAE (image -> tokens).")
    add_common_flags(parser, "train_vae")
    refuse(parser, "--transparent", "RGBA images are not supported yet: convert them to RGB")
    add_picture_data_flags(parser)
    g = parser.add_argument_group("training")
    g.add_argument("--batch_size", type=positive_int, default=8)
    g.add_argument("--learning_rate", type=positive_float, default=1e-3)
    g.add_argument(
        "--lr_decay_rate", type=positive_float, default=0.98, help="learning-rate factor per epoch"
    )
    g.add_argument("--clip_grad_norm", type=positive_float, default=None)
    g.add_argument("--starting_temp", type=positive_float, default=1.0, help="gumbel: first temperature")
    g.add_argument("--temp_min", type=positive_float, default=0.5, help="gumbel: lowest temperature")
    g.add_argument(
        "--anneal_rate",
        type=nonneg_float,
        default=1e-6,
        help="gumbel: temperature = max(start * exp(-rate * step), min)",
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
    m.add_argument("--kl_loss_weight", type=nonneg_float, default=0.0, help="gumbel: KL to uniform codes")
    m.add_argument("--straight_through", action="store_true", help="gumbel: hard Gumbel-softmax codes")
    v = parser.add_argument_group("fine-tune a Taming VQGAN (the architecture and codes come from its files)")
    v.add_argument("--vqgan_model_path", type=Path, default=None, help="its Lightning .ckpt (e.g. last.ckpt)")
    v.add_argument("--vqgan_config_path", type=Path, default=None, help="its project .yaml")
    q = parser.add_argument_group("quantizer (models/quantizers.py)")
    q.add_argument(
        "--quantizer",
        choices=QUANTIZERS,
        default="gumbel",
        help="gumbel: DALL-E's Gumbel-softmax dVAE (DALLE-pytorch's); vq: l2-normalised low-dimensional "
        "codes with EMA updates; fsq: finite scalar quantization; lfq: lookup-free quantization",
    )
    q.add_argument(
        "--codebook_dim", type=positive_int, default=16, help="vq: the width codes are compared in (8-32)"
    )
    q.add_argument("--vq_decay", type=fraction, default=0.9, help="vq: EMA decay of the codebook")
    q.add_argument(
        "--dead_code_threshold",
        type=nonneg_float,
        default=0.1,
        help="vq: restart codes whose EMA count (uses a step, averaged) falls under this (0: never)",
    )
    q.add_argument(
        "--no_kmeans_init", action="store_true", help="vq: random codes instead of k-means on the first batch"
    )
    q.add_argument(
        "--commitment_weight",
        type=nonneg_float,
        default=0.25,
        help="vq, lfq: encoder-to-code commitment loss",
    )
    q.add_argument(
        "--fsq_levels",
        type=int_list,
        default=None,
        help="fsq: levels a channel, e.g. 8,5,5,5 (codes: their product; default: the FSQ paper's for "
        "about --num_tokens codes, 8,5,5,5 without it)",
    )
    q.add_argument(
        "--lfq_bits", type=positive_int, default=None, help="lfq: bits a code (2**bits codes; default 10)"
    )
    q.add_argument("--entropy_loss_weight", type=nonneg_float, default=0.1, help="lfq: entropy loss weight")
    a = parser.add_argument_group("VQGAN's objective (any quantizer)")
    a.add_argument(
        "--gan",
        action="store_true",
        help="train against a PatchGAN discriminator (hinge loss, adaptive weight)",
    )
    a.add_argument(
        "--disc_start", type=nonneg_int, default=1000, help="--gan: the step the adversarial losses start at"
    )
    a.add_argument(
        "--disc_weight",
        type=nonneg_float,
        default=0.8,
        help="--gan: factor on the adaptive adversarial weight",
    )
    a.add_argument(
        "--disc_layers", type=positive_int, default=3, help="--gan: the discriminator's stride-2 layers"
    )
    a.add_argument("--disc_hidden", type=positive_int, default=64, help="--gan: its first layer's channels")
    a.add_argument(
        "--perceptual_weights",
        type=str_list,
        default=None,
        help="add LPIPS to the reconstruction loss, with these weight files (not fetched here): "
        "torchvision's vgg16-397923af.pth and LPIPS' vgg.pth, comma-separated (.pth or .safetensors)",
    )
    a.add_argument(
        "--perceptual_weight", type=nonneg_float, default=1.0, help="--perceptual_weights: factor on LPIPS"
    )
    return parser


# the --gan flags and the keys of a checkpoint's "gan" settings
GAN_FLAGS = {"disc_start": "start", "disc_weight": "weight"}
DISCRIMINATOR_FLAGS = {"disc_layers": "layers", "disc_hidden": "hidden"}


def build_objective(
    args: argparse.Namespace, vae: DiscreteVAE, resume: Checkpoint | None
) -> VQGANObjective | None:
    """VQGAN's objective around ``vae`` with ``--gan`` (a resumed run's discriminator, with its weights)
    and / or ``--perceptual_weights``; None for the VAE's own loss."""
    perceptual = None
    if args.perceptual_weights:
        try:
            perceptual = Perceptual.from_files(args.perceptual_weights)
        except ValueError as e:
            raise UserError(str(e)) from None
    elif args.given("perceptual_weight"):
        raise UserError("--perceptual_weight scales --perceptual_weights: add the weight files or drop it")
    discriminator, settings = build_discriminator(args, vae, resume)
    if discriminator is None and perceptual is None:
        return None
    return VQGANObjective(vae, discriminator, *settings, perceptual, args.perceptual_weight)


def build_discriminator(
    args: argparse.Namespace, vae: DiscreteVAE, resume: Checkpoint | None
) -> tuple[PatchDiscriminator | None, tuple[int, float]]:
    """``--gan``'s discriminator (a resumed run's, with its weights) and its (start, weight), or None."""
    settings = None if resume is None else resume.meta.get("gan")
    if resume is not None and bool(settings) != args.gan:
        had = "with" if settings else "without"
        raise UserError(
            f"--resume continues {args.output}, trained {had} --gan: "
            f"{'add' if settings else 'drop'} --gan (or start a new run)"
        )
    if not args.gan:
        given = [f"--{flag}" for flag in (*GAN_FLAGS, *DISCRIMINATOR_FLAGS) if args.given(flag)]
        if given:
            verb, them = ("configure", "them") if len(given) > 1 else ("configures", "it")
            raise UserError(f"{', '.join(given)} {verb} --gan: add --gan or drop {them}")
        return None, (0, 0.0)
    if settings is not None:
        fixed = {flag: settings[key] for flag, key in GAN_FLAGS.items()}
        fixed |= {flag: settings["discriminator"][key] for flag, key in DISCRIMINATOR_FLAGS.items()}
        refuse_changed_flags(args, fixed, f"--resume continues {args.output} with the discriminator it built")
        discriminator = PatchDiscriminator(**settings["discriminator"])
        load_weights(discriminator, resume.weights(DISCRIMINATOR_FILE), resume.path / DISCRIMINATOR_FILE)
        return discriminator, (settings["start"], settings["weight"])
    discriminator = PatchDiscriminator(vae.channels, args.disc_hidden, args.disc_layers)
    if vae.image_size < discriminator.min_image_size():
        raise UserError(
            f"--gan: a {args.disc_layers}-layer discriminator needs images of at least "
            f"{discriminator.min_image_size()} px, these are {vae.image_size}: lower --disc_layers"
        )
    return discriminator, (args.disc_start, args.disc_weight)


# which quantizers read each quantizer flag (given for another, it is refused rather than ignored); the
# Gumbel dVAE's temperature flags are not refused elsewhere: config files such as demo_vae.yaml set them
FLAG_QUANTIZERS = {
    "codebook_dim": ("vq",),
    "vq_decay": ("vq",),
    "dead_code_threshold": ("vq",),
    "no_kmeans_init": ("vq",),
    "commitment_weight": ("vq", "lfq"),
    "fsq_levels": ("fsq",),
    "lfq_bits": ("lfq",),
    "entropy_loss_weight": ("lfq",),
}


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
        objective: VQGANObjective | None = None,
    ) -> None:
        self.vae, self.objective = vae, objective
        self.model: nn.Module = vae if objective is None else objective
        self.data_description = data_description
        self.schedule, self.num_images_save = temperature, num_images_save
        self.temperature = temperature.start
        self.usage = CodebookUsage(vae.num_tokens)
        self.warned_at: int | None = None
        self.sampling = False
        vae.codebook.register_forward_hook(self._count_codes)

    def _count_codes(self, module: nn.Module, inputs: Any, quantized: Quantized) -> None:
        if module.training and not self.sampling:  # training batches only (not sample grids, validation)
            self.usage.update(quantized.indices)

    def make_item(self, dataset: Any, index: int, rng: random.Random) -> Tensor:
        return dataset.get(index, rng)[0]

    def make_sample(self, image: Tensor, captions: list[str], rng: random.Random) -> Tensor:
        return image

    def collate(self, items: list[Tensor]) -> Tensor:
        return torch.stack(items)

    def loss(self, model: nn.Module, batch: Tensor, step: int) -> tuple[Tensor, dict[str, float]]:
        self.temperature = self.schedule.at(step)
        if self.objective is None:
            loss, parts = model(batch, return_loss=True, temp=self.temperature), {}
        else:
            loss, parts = model(batch, step, temp=self.temperature)
        # checked once a window (reading the counts waits for the device), not every step
        if (step + 1) % self.usage.window == 0:
            warning = self.usage.collapse_warning(step + 1)
            if warning and (self.warned_at is None or step - self.warned_at >= WARN_EVERY):
                self.warned_at = step
                self.log(warning)
        figures = {**self.usage.figures(), **parts}
        if isinstance(self.vae.codebook, GumbelQuantizer):
            figures["temperature"] = self.temperature
        restarted = getattr(self.vae.codebook, "restarted", None)
        if restarted is not None:
            figures["codes_restarted"] = restarted  # since this process started
        return loss, figures

    eval_figure_names = ("recon_mse",)

    def eval_figures(self, model: nn.Module, batch: Tensor) -> Tensor:
        """Reconstruction error through the hard codes (what DALL-E's tokens decode to), pixels in [0, 1]."""
        vae = getattr(model, "module", model)  # DDP / DeepSpeed wrap it
        vae = getattr(vae, "vae", vae)  # --gan / --perceptual_weights: inside the objective
        self.sampling = True
        try:
            recons = vae.denormalize(vae.decode(vae.get_codebook_indices(batch))).clamp(0, 1)
        finally:
            self.sampling = False
        return ((recons.float() - batch.float()) ** 2).mean().reshape(1)

    def eval_summary(self, means: dict[str, float]) -> dict[str, float]:
        return {**means, "psnr": -10 * math.log10(max(means["recon_mse"], 1e-12))}

    @torch.no_grad()
    def save_samples(self, module: nn.Module, batch: Tensor, step: int, folder: Path) -> Path:
        images = batch[: self.num_images_save]
        module = getattr(module, "vae", module)
        self.sampling = True
        try:
            recons = module.denormalize(module.decode(module.get_codebook_indices(images)))
        finally:
            self.sampling = False
        path = folder / f"vae-step-{step:08d}.png"
        image_grid(torch.cat((images, recons.clamp(0, 1))).cpu(), nrow=len(images)).save(path)
        return path

    def checkpoint_args(self) -> dict[str, Any]:
        meta = {"vae": describe_vae(self.vae), "data": self.data_description}
        if self.objective is not None and self.objective.discriminator is not None:
            meta["gan"] = self.objective.settings()
        return {"kind": "vae", "meta": meta}

    def split_weights(
        self, weights: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]]]:
        if self.objective is None:
            return weights, {}
        return self.objective.split_weights(weights)


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
    "quantizer": "quantizer",
    "codebook_dim": "vq_codebook_dim",
    "vq_decay": "vq_decay",
    "dead_code_threshold": "dead_code_threshold",
    "commitment_weight": "commitment_weight",
    "fsq_levels": "fsq_levels",
    "lfq_bits": "lfq_bits",
    "entropy_loss_weight": "entropy_loss_weight",
}


def load_taming(args: argparse.Namespace) -> VQGAN | None:
    """``--vqgan_model_path`` / ``--vqgan_config_path``: the Taming VQGAN to fine-tune, or None."""
    if args.vqgan_model_path is None and args.vqgan_config_path is None:
        return None
    if args.vqgan_model_path is None or args.vqgan_config_path is None:
        raise UserError("fine-tuning a VQGAN needs both --vqgan_model_path and --vqgan_config_path")
    fixed = [f"--{flag}" for flag in FLAG_OF_CONFIG if flag != "image_size" and args.given(flag)]
    fixed += [f"--{flag}" for flag in FLAG_QUANTIZERS if args.given(flag)]
    if fixed:
        raise UserError(
            f"{', '.join(fixed)}: the VQGAN's project config fixes its architecture and codebook; drop them"
        )
    vqgan = trainable_vqgan(args.vqgan_model_path, args.vqgan_config_path)
    if args.given("image_size") and args.image_size != vqgan.image_size:
        raise UserError(
            f"--image_size {args.image_size}: the VQGAN was built for {vqgan.image_size} px; drop the flag"
        )
    return vqgan


def build_vae(args: argparse.Namespace, image_size: int) -> DiscreteVAE:
    """The DiscreteVAE the flags describe; flags of a quantizer other than ``--quantizer`` are refused."""
    kind = args.quantizer
    foreign = [
        f"--{flag}" for flag, kinds in FLAG_QUANTIZERS.items() if args.given(flag) and kind not in kinds
    ]
    if foreign:
        raise UserError(
            f"{', '.join(foreign)} {'do' if len(foreign) > 1 else 'does'} not apply to --quantizer {kind}: "
            "drop it or pick the quantizer it belongs to (train_vae.py --help)"
        )
    # fsq / lfq take their codebook size from their levels / bits unless --num_tokens is given
    num_tokens = args.num_tokens if kind in ("gumbel", "vq") or args.given("num_tokens") else None
    try:
        resolve_codebook(kind, num_tokens, args.fsq_levels, args.lfq_bits)
    except ValueError as e:
        raise UserError(f"train_vae.py: {e}") from None
    try:
        return DiscreteVAE(
            image_size=image_size,
            num_tokens=num_tokens,
            codebook_dim=args.emb_dim,
            num_layers=args.num_layers,
            num_resnet_blocks=args.num_resnet_blocks,
            hidden_dim=args.hidden_dim,
            smooth_l1_loss=args.smooth_l1_loss,
            temperature=args.starting_temp,
            straight_through=args.straight_through,
            kl_div_loss_weight=args.kl_loss_weight,
            quantizer=kind,
            vq_codebook_dim=args.codebook_dim,
            vq_decay=args.vq_decay,
            kmeans_init=not args.no_kmeans_init,
            dead_code_threshold=args.dead_code_threshold,
            commitment_weight=args.commitment_weight,
            fsq_levels=args.fsq_levels,
            lfq_bits=args.lfq_bits,
            entropy_loss_weight=args.entropy_loss_weight,
        )
    except ValueError as e:
        raise UserError(f"--image_size / --num_layers: {e}") from None


@cli
def main(argv: list[str] | None = None) -> None:
    args = parse_flags(build_parser(), argv)
    backend = start_backend(backend_config(args))
    seed_everything(args.seed)
    resume = resume_point(args, backend)
    vqgan = load_taming(args) if resume is None else None
    data = data_config(args, args.image_folder, None if vqgan is None else vqgan.image_size)
    dataset = load_data(data, backend)
    if vqgan is not None:
        vae = vqgan
    elif resume is not None:
        vae, resume = load_vae(resume)
        built = {"quantizer": "gumbel", **vae.config()}
        refuse_changed_flags(
            args,
            {flag: built[key] for flag, key in FLAG_OF_CONFIG.items() if key in built},
            f"--resume continues {args.output} with the VAE it built",
        )
    else:
        vae = build_vae(args, data.image_size)
    if getattr(vae, "quantizer", "") == "vq" and backend.name == "horovod" and backend.world_size > 1:
        # the EMA codebook is reduced by torch.distributed collectives, which Horovod does not start
        raise UserError(
            "--quantizer vq under Horovod: its EMA codebook needs torch.distributed to sum code counts "
            "across ranks; launch with torchrun (--distributed_backend ddp) or deepspeed, or use --quantizer "
            "fsq / lfq"
        )
    objective = build_objective(args, vae, resume)
    run, flags = prepare_run(args, "train_vae", backend, data)
    temperature = Temperature(args.starting_temp, args.temp_min, args.anneal_rate)
    task = VAETask(vae, dataset.describe(), temperature, args.num_images_save, objective)
    task.model.to(backend.device)
    if (args.bf16 or args.fp16 or args.amp) and backend.name != "deepspeed":
        # half-precision convolutions run faster channels-last (bench/RESULTS.md); DeepSpeed broadcasts and
        # flattens parameters as contiguous bytes, which channels-last weights are not
        task.model.to(memory_format=torch.channels_last)
    validation = load_validation(args, data, backend)
    final = run_training(
        task,
        args,
        backend,
        run,
        flags,
        dataset,
        resume,
        epoch_decay=args.lr_decay_rate,
        validation=validation,
    )
    if backend.is_root and final is not None:
        print(f"VAE trained: {final}")
    backend.shutdown()
