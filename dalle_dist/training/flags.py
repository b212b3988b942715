"""The trainers' flags (DALLE-pytorch's names): the groups every trainer takes, and the typed configs they
are turned into, once (``BackendConfig``, ``DataConfig``, ``LoopSettings``): the flags are read, never
written."""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..cli import (
    Flags,
    add_device_flag,
    add_tokenizer_flags,
    fraction,
    nonneg_int,
    output_folder,
    positive_int,
    unit_interval,
)
from ..data import DataConfig
from ..data.synthetic import SHAPE_COUNTS
from ..distributed import BACKENDS, BackendConfig
from ..errors import UserError
from .loop import LoopSettings
from .tracking import add_tracking_flags

BUILT_IN_IMAGE_SIZE, FOLDER_IMAGE_SIZE = 32, 128  # --image_size defaults
# DataConfig field -> the shard flag (add_shard_flags) that sets it
SHARD_FLAGS = {
    "shard_keys": "wds",
    "caption_field": "wds_caption_field",
    "resampled": "wds_resampled",
    "shuffle_buffer": "shuffle_buffer",
    "caption_limit": "bpe_train_captions",
}


# flags that make a run what it is beside its model (whose flags the checkpoint fixes): its data and their
# order (seed), its VAE and where it started, and the optimizer settings its saved state carries. The
# batch shape may change with the world size (2 ranks x 4 resume as 1 x 8: the same global batches), so it
# is not among them
RUN_DEFINING = (
    "image_text_folder",
    "image_folder",
    "wds",
    "dataset_size",
    "holdout",
    "shapes",
    "seed",
    "validation_fraction",
    "wds_val",
    "image_size",
    "vae_path",
    "dalle_path",
    "taming",
    "vqgan_model_path",
    "vqgan_config_path",
    "openai_enc_path",
    "openai_dec_path",
    "adam_beta2",  # torch's Optimizer.load_state_dict restores the saved betas over the given ones
)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (Path, str)) or isinstance(b, (Path, str)):
        if a is None or b is None:
            return a is b
        return str(a) == str(b) or Path(a).resolve() == Path(b).resolve()
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9)
    return a == b


def resume_mode(text: str) -> bool | str:
    """``--resume``'s optional value: ``auto`` (YAML configs may also say true / false)."""
    if text == "auto":
        return "auto"
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    raise argparse.ArgumentTypeError(f"takes no value but 'auto', got {text!r}")


def refuse_changed_flags(args: Flags, fixed: Mapping[str, Any], why: str) -> None:
    """``UserError`` naming every flag the user gave whose value differs from ``fixed`` (flag -> the value
    the run or its weights have), with ``why`` they cannot change."""
    differ = [
        f"--{name} {_shown(getattr(args, name))} (it has {_shown(value)})"
        for name, value in fixed.items()
        if args.given(name) and not _same(getattr(args, name), value)
    ]
    if differ:
        raise UserError(f"{why}: {', '.join(differ)}; drop {'them' if len(differ) > 1 else 'it'}")


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def backend_config(args: argparse.Namespace) -> BackendConfig:
    """The engine, device, batch shape, precision and engines' own options the flags ask for."""
    name = args.distributed_backend
    for engine in BACKENDS.values():
        flag = engine.chosen_by_flag(args)
        if flag is not None:
            if name not in (None, engine.name):
                raise UserError(f"{flag} and --distributed_backend {name} name two engines: keep one")
            name = engine.name
    return BackendConfig(
        name=name,
        device=args.device,
        batch_size=args.batch_size,
        ga_steps=args.ga_steps,
        fp16=args.fp16,
        bf16=args.bf16,
        amp=args.amp,
        cpu_offload=args.cpu_offload,
        engine_options={engine.name: engine.options_from_flags(args) for engine in BACKENDS.values()},
    )


def refuse_built_in_flags(args: argparse.Namespace, location: str | Path | None) -> None:
    """Flags of the built-in dataset given beside a folder or shards (``location``): one line."""
    if location is None:
        return
    for flag, given in (("holdout", bool(args.holdout)), ("shapes", args.shapes != "one")):
        if given:
            raise UserError(f"--{flag} applies to the built-in dataset only: drop it or drop the folder flag")


def data_config(
    args: argparse.Namespace, location: str | Path | None, image_size: int | None = None, *, check_size=True
) -> DataConfig:
    """The data the flags name: shards with ``--wds``, the folder ``location`` when given, else the built-in
    dataset. ``image_size`` is the run's when it is fixed (by a VAE or a checkpoint), else the flag's, else
    the default of the kind of data. ``check_size``: refuse folder images smaller than that."""
    if getattr(args, "wds", "") and args.validation_fraction > 0:
        raise UserError(
            "--validation_fraction cannot split a shard stream: hold out whole shards with --wds_val SHARDS"
        )
    if getattr(args, "wds_val", "") and not getattr(args, "wds", ""):
        raise UserError("--wds_val names validation shards for a --wds run: add --wds, or drop --wds_val")
    refuse_built_in_flags(args, location)
    default = FOLDER_IMAGE_SIZE if location is not None else BUILT_IN_IMAGE_SIZE
    # the shard flags only exist for the trainers that read shards; the others keep DataConfig's defaults
    shards = {field: getattr(args, flag) for field, flag in SHARD_FLAGS.items() if hasattr(args, flag)}
    return DataConfig(
        location=None if location is None else str(location),
        image_size=image_size or args.image_size or default,
        seed=args.seed,
        resize_ratio=args.random_resize_crop_lower_ratio,
        strict=args.strict_data,
        check_size=check_size,
        dataset_size=args.dataset_size,
        holdout=args.holdout,
        shapes=SHAPE_COUNTS[args.shapes],
        **shards,
    )


def loop_settings(args: argparse.Namespace, backend: BackendConfig) -> LoopSettings:
    """The loop's settings; the batch shape is the backend's (an engine's config file may fix it)."""
    return LoopSettings(
        epochs=args.epochs,
        batch_size=backend.batch_size,
        seed=args.seed,
        max_steps=args.max_steps,
        ga_steps=backend.ga_steps,
        save_every_n_steps=args.save_every_n_steps,
        keep_n_checkpoints=args.keep_n_checkpoints,
        log_every=args.log_every,
        eval_every=args.eval_every,
        eval_batches=args.eval_batches,
        sample_every=args.sample_every,
        num_workers=args.num_workers,
        flops_profiler=args.flops_profiler,
        nonfinite_patience=args.nonfinite_patience,
    )


def add_common_flags(parser: argparse.ArgumentParser, script: str) -> None:
    """Flags both trainers share: run directory, resume, data, schedule, backend."""
    g = parser.add_argument_group("run")
    g.add_argument(
        "--output",
        type=output_folder,
        default=None,
        help=f"run directory (default runs/{script}-<timestamp>)",
    )
    g.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        type=resume_mode,
        metavar="auto",
        help="continue the run in --output from its latest checkpoint; --resume auto: continue it when it "
        "has a checkpoint, else start it (for jobs a launcher or scheduler restarts: torchrun "
        "--max-restarts, SLURM requeue)",
    )
    g.add_argument("--seed", type=int, default=0)
    add_device_flag(g)
    engines = ", ".join(
        cls.name + (f" (alias {', '.join(cls.aliases)})" if cls.aliases else "") for cls in BACKENDS.values()
    )
    g.add_argument(
        "--distributed_backend",
        "--distr_backend",
        dest="distributed_backend",
        default=None,
        help=f"{engines}; default: the launcher's, else single",
    )
    for engine in BACKENDS.values():
        engine.add_flags(g)
    g.add_argument(
        "--cpu_offload",
        action="store_true",
        help="keep optimizer state (DeepSpeed ZeRO-3: weights too) in CPU memory",
    )
    g.add_argument("--num_workers", type=nonneg_int, default=0, help="data-loader worker processes")
    g.add_argument(
        "--fp16",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="fp16 autocast with loss scaling (CUDA)",
    )
    g.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="bf16 autocast (CPU or GPU); weights stay fp32",
    )
    g.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="automatic mixed precision: bf16 on CPU, fp16 on CUDA",
    )
    g.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile each transformer branch (and the VAE's encoder and decoder): faster steps after "
        "a compilation of seconds to minutes at the start; same weights and checkpoints",
    )
    g.add_argument(
        "--flops_profiler",
        action="store_true",
        help="profile one training step (DeepSpeed's flops profiler under DeepSpeed, torch's otherwise), "
        "print per-module FLOPs and per-operator time, and exit without a checkpoint",
    )
    g.add_argument(
        "--nonfinite_patience",
        type=positive_int,
        default=3,
        help="a batch whose loss is NaN / Inf is skipped with a warning; this many in a row stop the run "
        "(exit 2; checkpoints intact)",
    )
    g.add_argument("--log_every", type=positive_int, default=10, help="steps between log lines")
    g.add_argument("--save_every_n_steps", type=positive_int, default=1000)
    g.add_argument("--keep_n_checkpoints", type=positive_int, default=None, help="keep only the newest N")

    d = parser.add_argument_group("data")
    d.add_argument(
        "--image_size",
        type=positive_int,
        default=None,
        help="image side in pixels (default: 32 for the built-in dataset, 128 for folders)",
    )
    d.add_argument("--dataset_size", type=positive_int, default=20000, help="items of the built-in dataset")
    d.add_argument(
        "--holdout",
        type=str,
        default="",
        help='built-in dataset: colour-shape pairs to leave out, e.g. "red triangle,blue circle"',
    )
    d.add_argument(
        "--shapes",
        choices=tuple(SHAPE_COUNTS),
        default="one",
        help='built-in dataset: shapes per picture; "two" captions both ("a small red square and a large '
        'blue circle")',
    )
    d.add_argument(
        "--strict_data",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="folders: stop (exit 2) on the first kind of broken pair instead of skipping and listing them",
    )
    d.add_argument("--validation_fraction", type=fraction, default=0.0, help="share of the data held out")
    d.add_argument("--eval_every", type=positive_int, default=500, help="steps between validation losses")
    d.add_argument("--eval_batches", type=positive_int, default=8, help="validation batches per evaluation")
    d.add_argument(
        "--random_resize_crop_lower_ratio",
        type=unit_interval,
        default=0.75,
        help="folders: random crops keep at least this share of the image area",
    )

    t = parser.add_argument_group("optimisation")
    t.add_argument("--epochs", type=positive_int, default=20)
    t.add_argument(
        "--max_steps", type=positive_int, default=None, help="stop after this many optimizer steps"
    )
    t.add_argument("--warmup_steps", type=nonneg_int, default=0)
    t.add_argument(
        "--lr_schedule",
        choices=("constant", "cosine", "plateau"),
        default=None,
        help="default constant (plateau with --lr_decay)",
    )
    t.add_argument("--ga_steps", type=positive_int, default=1, help="gradient accumulation steps")
    t.add_argument(
        "--adam_beta2",
        type=fraction,
        default=0.999,
        help="Adam's second-moment decay (0.999: PyTorch's and DALLE-pytorch's; 0.99 adapts faster in "
        "short runs, bench/RESULTS.md)",
    )
    t.add_argument("--sample_every", type=positive_int, default=1000, help="steps between sample images")
    add_tracking_flags(parser, script)


def add_caption_data_flags(group: argparse._ArgumentGroup) -> None:
    """Captioned data and the text tokenizer: train_dalle.py's flags (train_clip.py takes the same)."""
    group.add_argument(
        "--image_text_folder",
        type=str,
        default=None,
        help="folder of images + same-named .txt captions, or with --wds shards: a .tar, a folder of them, "
        "a brace pattern, an http(s) URL or pipe: command (default: built-in dataset)",
    )
    add_shard_flags(group)
    group.add_argument(
        "--truncate_captions", action="store_true", help="cut captions longer than --text_seq_len"
    )
    add_tokenizer_flags(group, trained=False)
    group.add_argument(
        "--bpe_vocab_size", type=positive_int, default=1024, help="size of the BPE trained on captions"
    )


def add_picture_data_flags(parser: argparse.ArgumentParser) -> None:
    """Pictures without captions (train_vae.py, train_autoencoder.py): a folder, or the shards
    train_dalle.py reads."""
    d = parser.add_argument_group("data")
    d.add_argument(
        "--image_folder",
        "--image_text_folder",
        dest="image_folder",
        type=str,
        default=None,
        help="folder of images (captions are not needed), or with --wds the shards train_dalle.py reads "
        "(default: built-in)",
    )
    add_shard_flags(d, tokenizer=False)


def add_shard_flags(group: argparse._ArgumentGroup, tokenizer: bool = True) -> None:
    """WebDataset streaming (DALLE-pytorch's ``--wds``); ``tokenizer``: the run trains a BPE on captions."""
    group.add_argument(
        "--wds",
        type=str,
        default="",
        help="read --image_text_folder as WebDataset shards; the image and caption keys, e.g. jpg,txt "
        "(img2dataset: jpg,txt); 'jpg;png,json' tries jpg then png and reads captions from JSON",
    )
    group.add_argument(
        "--wds_val",
        type=str,
        default="",
        help="--wds: validation shards, held out whole (a .tar, folder, brace pattern or URL, read with the "
        "training shards' keys); the loss on them is logged every --eval_every steps",
    )
    group.add_argument(
        "--wds_caption_field", default="caption", help="--wds ...,json: the JSON field holding the caption"
    )
    group.add_argument(
        "--wds_resampled",
        action="store_true",
        help="--wds: each worker draws whole shards at random with replacement (large runs, no global order)",
    )
    group.add_argument(
        "--shuffle_buffer", type=positive_int, default=1000, help="--wds: samples each worker shuffles among"
    )
    if not tokenizer:
        return
    group.add_argument(
        "--bpe_train_captions",
        type=positive_int,
        default=100_000,
        help="--wds: the default BPE is trained on this many captions from the start of the stream",
    )
