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
from ..cli import cli
from ..data import image_grid
from ..distributed import Precision
from ..errors import UserError
from ..models import DiscreteVAE
from ..models.discriminator import PatchDiscriminator
from ..models.perceptual import Perceptual
from ..models.pretrained import trainable_vqgan
from ..models.quantizers import FiniteScalarQuantizer, GumbelQuantizer, Quantized, resolve_codebook
from ..models.vqgan import VQGAN
from .codebook import CodebookUsage
from .flags import backend_config, data_config, refuse_changed_flags
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
from .vae_flags import DISCRIMINATOR_FLAGS, FLAG_OF_CONFIG, FLAG_QUANTIZERS, GAN_FLAGS, build_parser
from .vqgan_objective import DISCRIMINATOR_FILE, VQGANObjective

WARN_EVERY = 500  # steps between repeated codebook-collapse warnings


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
    if kind == "fsq" and args.fsq_noise_dropout and not args.fsq_symmetric:
        raise UserError(
            "--fsq_noise_dropout needs symmetric levels: drop --no-fsq_symmetric or add --fsq_noise_dropout 0"
        )
    # fsq / lfq take their codebook size from their levels / bits unless --num_tokens is given
    num_tokens = args.num_tokens if kind in ("gumbel", "vq") or args.given("num_tokens") else None
    try:
        codes = resolve_codebook(kind, num_tokens, args.fsq_levels, args.lfq_bits)[0]
    except ValueError as e:
        raise UserError(f"train_vae.py: {e}") from None
    if kind == "fsq" and args.fsq_entropy_weight and codes > FiniteScalarQuantizer.MAX_ENTROPY_CODES:
        raise UserError(
            f"--fsq_entropy_weight works up to {FiniteScalarQuantizer.MAX_ENTROPY_CODES} codes, not {codes}: "
            "give fewer --fsq_levels or --fsq_entropy_weight 0"
        )
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
            fsq_symmetric=args.fsq_symmetric,
            fsq_noise_dropout=args.fsq_noise_dropout,
            fsq_entropy_weight=args.fsq_entropy_weight,
            fsq_entropy_temperature=args.fsq_entropy_temperature,
            lfq_bits=args.lfq_bits,
            entropy_loss_weight=args.entropy_loss_weight,
            lfq_temperature=args.lfq_temperature,
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
    half = Precision.from_flags(backend.device, fp16=args.fp16, bf16=args.bf16, amp=args.amp).name != "fp32"
    if half and backend.name != "deepspeed":
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
