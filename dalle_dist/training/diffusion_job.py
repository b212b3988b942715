"""What ``train_prior.py`` and ``train_decoder.py`` share: a frozen CLIP from ``--clip_path`` (its tokenizer
is the run's), the trainers' data and flags, and one ``main`` that builds the part, or takes it back from
the run's checkpoint on ``--resume`` (or from ``--<kind>_path`` to fine-tune).

The loop, engines, precision flags, trackers, checkpoints, resume, faults and bad-input handling are the
other trainers' (``training/job.py``); a part's checkpoint carries the CLIP it was trained on.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import (
    KIND_NAMES,
    RunDirectory,
    load_autoencoder,
    load_checkpoint,
    load_clip,
    load_decoder,
    load_prior,
    with_article,
)
from ..cli import Flags, Parser, check_tokenizer_flags, fraction, positive_float, positive_int
from ..errors import UserError
from .captions import CaptionTask, check_captions
from .ema import EMA, EMA_FILE
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

LOADERS = {"prior": load_prior, "decoder": load_decoder}
CARRIED = {"prior": (), "decoder": ("autoencoder",)}  # models a part may carry besides its CLIP
CARRIED_LOADERS = {"autoencoder": load_autoencoder}
SCRIPTS = {"prior": "train_prior.py", "decoder": "train_decoder.py"}


def build_parser(kind: str, description: str) -> Parser:
    """The flags both parts take; each adds its model group."""
    parser = Parser(prog=SCRIPTS[kind], description=description)
    add_common_flags(parser, f"train_{kind}")
    src = parser.add_argument_group("inputs")
    src.add_argument(
        "--clip_path",
        type=Path,
        default=None,
        help="train_clip.py run or checkpoint: frozen, and its tokenizer",
    )
    src.add_argument(f"--{kind}_path", type=Path, default=None, help=f"start from this {kind} (fine-tuning)")
    if "autoencoder" in CARRIED[kind]:
        src.add_argument(
            "--autoencoder_path",
            type=Path,
            default=None,
            help="train_autoencoder.py run or checkpoint: diffuse in its latents (frozen), not in pixels",
        )
    add_caption_data_flags(src)
    g = parser.add_argument_group("training")
    g.add_argument("--batch_size", type=positive_int, default=16)
    g.add_argument("--learning_rate", type=positive_float, default=3e-4)
    g.add_argument("--clip_grad_norm", type=positive_float, default=1.0)
    g.add_argument("--lr_decay", action="store_true", help="reduce the learning rate on plateaus")
    g.add_argument(
        "--sample_steps", type=positive_int, default=25, help="sampler steps of the progress samples (DDIM)"
    )
    g.add_argument(
        "--ema_decay",
        type=fraction,
        default=0.995,
        help="average of the weights that sampling uses (ema.safetensors in each checkpoint); 0 = off",
    )
    return parser


class DiffusionTask(CaptionTask):
    """(caption tokens, image, seed) samples for a part built on a frozen CLIP; the checkpoint carries the
    CLIP. The seed, drawn from the item's own RNG, makes the sample's noise, diffusion step and condition
    dropout, so that they do not depend on which rank trains the sample."""

    sample_steps = 25
    ema: EMA | None = None  # --ema_decay
    _ema_state: dict[str, Any] | None = None  # the whole average, gathered by every rank before a save

    def after_step(self, step: int) -> None:
        if self.ema is not None:
            self._ema_state = None  # the gathered copy served the last save: not kept between saves
            self.ema.update(self.model)

    def before_save(self, module: nn.Module) -> None:
        if self.ema is not None:
            self._ema_state = self.ema.state_dict()  # collective under FSDP: the root alone writes it

    def state_dict(self) -> dict[str, Any]:
        return {} if self._ema_state is None else {"ema": self._ema_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])

    def make_sample(self, image: Tensor, captions: list[str], rng: random.Random) -> tuple[Tensor, ...]:
        text, image = super().make_sample(image, captions, rng)
        return text, image, torch.tensor(rng.randrange(2**62), dtype=torch.long)

    def collate(self, items: list[tuple[Tensor, ...]]) -> tuple[Tensor, ...]:
        return tuple(torch.stack(parts) for parts in zip(*items, strict=True))

    def checkpoint_args(self) -> dict[str, Any]:
        meta = {"model": self.model.config(), "clip": self.model.clip.config(), **self.meta}
        autoencoder = getattr(self.model, "autoencoder", None)  # a latent decoder's, which it carries
        if autoencoder is not None:
            meta["autoencoder"] = autoencoder.config()
        extra = {} if self._ema_state is None else {"extra_weights": {EMA_FILE: self._ema_state["shadow"]}}
        return {"kind": self.kind, "meta": meta, "tokenizer": self.tokenizer, **extra}


def _model_flags(parser: Parser) -> list[str]:
    return [a.dest for g in parser._action_groups if g.title == "model" for a in g._group_actions]


def main(
    kind: str,
    parser: Parser,
    build: Callable[..., nn.Module],
    task_class: type[DiffusionTask],
    argv: list[str] | None,
) -> None:
    """Train a DALL-E 2 part: ``build(clip, args, image_size, **carried)`` makes a new one from the model
    flags (``carried``: the models of its ``--<name>_path`` inputs besides the CLIP, e.g. an autoencoder)."""
    args = parse_flags(parser, argv)
    backend = start_backend(backend_config(args))
    seed_everything(args.seed)
    resume = resume_point(args, backend)
    start = resume or getattr(args, f"{kind}_path")
    model = ckpt = None
    # the part, its CLIP (and what else it carries) and tokenizer come from the checkpoint
    if start is not None:
        model, tokenizer, ckpt = LOADERS[kind](start, ema=False)  # the raw weights training continues
        built = model.config()  # what the checkpoint says, and what it meant by what it does not say
        fixed = {flag: built[flag] for flag in _model_flags(parser) if flag in built}
        why = (
            f"--resume continues {args.output} with the {kind} it built"
            if resume is not None
            else f"--{kind}_path {start} fixes the {kind} (fine-tuning keeps its shape)"
        )
        refuse_changed_flags(args, fixed, why)
        sources = {name: ckpt.meta.get(f"{name}_source") for name in ("clip", *CARRIED[kind])}
        # (a resume inherits the run's input flags: only those the user gives now are compared)
        for name, source in sources.items():
            if args.given(f"{name}_path"):
                refuse_another_input(args, kind, name, source)
        clip = model.clip
        carried = {}
    else:
        if args.clip_path is None:
            raise UserError(
                f"{SCRIPTS[kind]} needs --clip_path (a train_clip.py run): the {kind} is built on its "
                "embeddings and tokenizer"
            )
        clip, tokenizer, clip_ckpt = load_clip(args.clip_path)
        sources, carried = {"clip": str(clip_ckpt.path)}, {}
        for name in CARRIED[kind]:
            if getattr(args, f"{name}_path") is not None:
                carried[name], input_ckpt = CARRIED_LOADERS[name](getattr(args, f"{name}_path"))
                sources[name] = str(input_ckpt.path)
    check_tokenizer_flags(tokenizer, args, SCRIPTS[kind])  # the flags may only confirm CLIP's
    # the decoder's pictures are the size it (or its autoencoder) was built for
    sized = model if model is not None else carried.get("autoencoder")
    image_size = getattr(sized, "image_size", None)
    if image_size is not None and args.image_size is not None and args.image_size != image_size:
        owner = "decoder" if model is not None else "autoencoder"
        raise UserError(f"--image_size {args.image_size} does not match the {owner}'s {image_size}: drop it")
    data = data_config(args, args.image_text_folder, image_size or args.image_size or clip.visual_image_size)
    dataset = load_data(data, backend)
    if model is None:
        try:
            model = build(clip, args, data.image_size, **carried)
        except ValueError as e:
            raise UserError(f"model flags: {e}") from None
    check_captions(dataset, tokenizer, model.text_seq_len, args.truncate_captions)
    if fine_tuning_into_a_run(args, kind, resume):
        raise UserError(
            f"--output {args.output} already holds a run: to continue it use --resume --output "
            f"{args.output} (--{kind}_path starts a new run from those weights)"
        )
    run, flags = prepare_run(args, f"train_{kind}", backend, data, text_seq_len=model.text_seq_len)
    meta = {f"{name}_source": src for name, src in sources.items() if src is not None}
    meta["data"] = dataset.describe()
    task = task_class(model.to(backend.device), tokenizer, meta, truncate_captions=args.truncate_captions)
    task.sample_steps = args.sample_steps
    if args.ema_decay > 0:
        task.ema = EMA(task.model, args.ema_decay)
    validation = load_validation(args, data, backend)
    final = run_training(
        task, args, backend, run, flags, dataset, ckpt if resume is not None else None, validation=validation
    )
    if backend.is_root and final is not None:
        print(f"{kind} trained: {final}")
    backend.shutdown()


def refuse_another_input(args: Flags, kind: str, name: str, source: str | None) -> None:
    """``--<name>_path`` given on a resume or a fine-tune: the part already carries its own (or none)."""
    flag, shown = f"--{name}_path", KIND_NAMES[name]
    given_path = getattr(args, f"{name}_path")
    given = load_checkpoint(given_path, kind=name).path
    if source is None:
        raise UserError(
            f"{flag} {given_path}: the {kind} was built without {with_article(shown)} (it diffuses "
            f"pixels); drop {flag}, or train a new {kind} with it"
        )
    if given.resolve() != Path(source).resolve():
        raise UserError(
            f"{flag} {given_path}: the {kind} carries the {shown} it was trained on ({source}); drop {flag}"
        )


def fine_tuning_into_a_run(args: argparse.Namespace, kind: str, resume: Path | None) -> bool:
    return (
        getattr(args, f"{kind}_path") is not None
        and resume is None
        and args.output is not None
        and RunDirectory(args.output).holds_a_run()
    )
