"""Command-line flags (DALLE-pytorch's names) and ``--config file.yaml`` (keys are flag names).

Values come from, in rising priority: the parser's defaults, the YAML file, the command line. Flag values
are checked by their argparse types so a bad value fails before anything is built.
"""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from ..errors import UserError
from .tracking import add_tracking_flags


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def nonneg_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


class Parser(argparse.ArgumentParser):
    """argparse with ``--config file.yaml`` support."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(**kwargs)
        self.add_argument(
            "--config", type=Path, help="YAML file whose keys are flag names; the command line wins"
        )

    def error(self, message: str) -> NoReturn:
        """One line, like every other bad input (argparse would print the usage block first)."""
        hint = ""
        unknown = re.match(r"unrecognized arguments: (-[^\s=]+)", message)
        if unknown:
            flags = [o for a in self._actions for o in a.option_strings]
            close = difflib.get_close_matches(unknown.group(1), flags, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
        self.exit(2, f"error: {message}{hint}; see {self.prog} --help\n")

    def parse(self, argv: Sequence[str] | None = None) -> argparse.Namespace:
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--config", type=Path)
        known, _ = pre.parse_known_args(argv)
        if known.config is not None:
            self.set_defaults(**self._read_config(known.config))
        return self.parse_args(argv)

    def _read_config(self, path: Path) -> dict[str, Any]:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"--config {path} does not exist: check the path") from None
        except yaml.YAMLError as e:
            raise UserError(f"--config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise UserError(f"--config {path} must be a mapping of flag names to values")
        known = {a.dest for a in self._actions}
        unknown = sorted(k for k in data if k.replace("-", "_") not in known)
        if unknown:
            raise UserError(
                f"--config {path}: unknown keys {', '.join(unknown)} (keys are this script's flag names)"
            )
        values = {}
        for key, value in data.items():
            dest = key.replace("-", "_")
            action = next(a for a in self._actions if a.dest == dest)
            if isinstance(value, str) and action.type is not None:
                try:
                    value = action.type(value)
                except (argparse.ArgumentTypeError, ValueError) as e:
                    raise UserError(f"--config {path}: {key}: {e}") from None
            values[dest] = value
        return values


class _Refused(argparse.Action):
    """A DALLE-pytorch flag this project does not take: using it explains why and what to do instead."""

    def __init__(self, option_strings: list[str], dest: str, why: str = "", takes_value: bool = False):
        super().__init__(option_strings, dest, nargs=None if takes_value else 0, help=argparse.SUPPRESS)
        self.why = why

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: Any = None):
        parser.error(f"{option} (a DALLE-pytorch flag) is not supported: {self.why}")


def refuse(parser: argparse.ArgumentParser, flag: str, why: str, takes_value: bool = False) -> None:
    """Accept ``flag`` only to refuse it in words (users arrive with DALLE-pytorch command lines)."""
    parser.add_argument(flag, action=_Refused, why=why, takes_value=takes_value, dest=f"_refused_{flag[2:]}")


def add_common_flags(parser: argparse.ArgumentParser, script: str) -> None:
    """Flags both trainers share: run directory, resume, data, schedule, backend."""
    g = parser.add_argument_group("run")
    g.add_argument(
        "--output", type=Path, default=None, help=f"run directory (default runs/{script}-<timestamp>)"
    )
    g.add_argument(
        "--resume", action="store_true", help="continue the run in --output from its latest checkpoint"
    )
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    g.add_argument(
        "--distributed_backend",
        "--distr_backend",
        dest="distributed_backend",
        default=None,
        help="single (alias dummy), ddp (alias torchrun), horovod or deepspeed; default: the launcher's, "
        "else single",
    )
    g.add_argument(
        "--deepspeed",
        dest="use_deepspeed",
        action="store_true",
        help="same as --distributed_backend deepspeed",
    )
    g.add_argument(
        "--deepspeed_config",
        type=Path,
        default=None,
        help="DeepSpeed JSON config whose keys override the ones built from the flags",
    )
    g.add_argument(
        "--zero_stage",
        type=int,
        choices=(0, 1, 2, 3),
        default=1,
        help="DeepSpeed ZeRO stage: 1 partitions optimizer state, 2 also gradients, 3 also weights",
    )
    g.add_argument(
        "--cpu_offload",
        action="store_true",
        help="DeepSpeed: keep optimizer state (ZeRO-3: weights too) in CPU memory",
    )
    # the deepspeed launcher appends --local_rank=N to the script's arguments (LOCAL_RANK is read instead)
    g.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
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
    group.add_argument(
        "--bpe_path",
        type=Path,
        default=None,
        help="tokenizer to use instead of training a BPE: a .json from python -m dalle_dist.text.train_bpe, "
        "a Hugging Face tokenizer.json, or a YouTokenToMe .model",
    )
    group.add_argument("--hug", action="store_true", help="--bpe_path is a Hugging Face tokenizer.json")
    group.add_argument(
        "--chinese", action="store_true", help="BERT Chinese tokenizer (transformers; see --chinese_vocab)"
    )
    group.add_argument(
        "--chinese_vocab",
        type=str,
        default=None,
        help="for --chinese (implies it): a folder or file with BERT's vocab.txt, or a hub model name; "
        "None: bert-base-chinese from the hub",
    )
    group.add_argument(
        "--bpe_vocab_size", type=positive_int, default=1024, help="size of the BPE trained on captions"
    )


def add_shard_flags(group: argparse._ArgumentGroup) -> None:
    """WebDataset streaming (DALLE-pytorch's ``--wds``)."""
    group.add_argument(
        "--wds",
        type=str,
        default="",
        help="read --image_text_folder as WebDataset shards; the image and caption keys, e.g. jpg,txt "
        "(img2dataset: jpg,txt); 'jpg;png,json' tries jpg then png and reads captions from JSON",
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
    group.add_argument(
        "--bpe_train_captions",
        type=positive_int,
        default=100_000,
        help="--wds: the default BPE is trained on this many captions from the start of the stream",
    )
