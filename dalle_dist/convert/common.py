"""What every converter shares: the printed report, reading torch files safely, taking their weights key by
key, and placing tensors into our state dict with shape checks."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import UserError
from ..safe_load import NotTorchFileError, UnsafeFileError, load_plain


class Report:
    """What the conversion did, printed as it goes: mapped options, dropped ones, notes."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def section(self, title: str) -> None:
        self.lines.append(title)

    def item(self, text: str) -> None:
        self.lines.append(f"  {text}")

    def print(self) -> None:
        print("\n".join(self.lines))


def refuse(where: str, option: str, value: Any, why: str) -> UserError:
    """The error for an option whose value has no dalle_dist equivalent."""
    return UserError(f"{where}: {option}={value!r} cannot be converted: {why}")


def load_file(file: Path, expected: str, source: str) -> Any:
    """The tensors and plain data in ``file``; anything else is refused in words. ``expected`` says what to
    pass instead ("the vae.pt or dalle.pt DALLE-pytorch wrote"), ``source`` who writes such files."""
    try:
        return load_plain(file)
    except NotTorchFileError as e:
        raise UserError(f"{file} is not a PyTorch checkpoint file ({e}): pass {expected}") from None
    except UnsafeFileError as e:
        hint = ""
        if "GLOBAL deepspeed." in str(e) and importlib.util.find_spec("deepspeed") is None:
            hint = (
                "; the class is DeepSpeed's: install DeepSpeed (sh install_deepspeed.sh) so that "
                "the few its checkpoints hold can be allowed"
            )
        elif "GLOBAL deepspeed." in str(e):
            hint = "; that DeepSpeed class is not one its checkpoints hold"
        raise UserError(
            f"refused to load {file}: it holds more than tensors and plain data ({e}), which "
            f"{source}'s checkpoints never do; nothing in it was run{hint}"
        ) from None


def state_dict(value: Any, where: str) -> dict[str, Tensor]:
    """``value`` if it is a mapping of names to tensors, else a ``UserError`` naming ``where``."""
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in value.items()
    ):
        raise UserError(f"{where} is not a state dict (a mapping of names to tensors)")
    return dict(value)


class Weights:
    """Their state dict, taken key by key (float tensors as fp32); what is never taken is reported."""

    def __init__(
        self, state: dict[str, Tensor], where: str, report_notes: list[str], source: str, config: str
    ) -> None:
        # ``config``: what their options are called ("hparams", "config.yaml"), for the messages
        self.where, self.source, self.config = where, source, config
        self.state: dict[str, Tensor] = {}
        dtypes = set()
        for k, v in state.items():
            if v.is_floating_point() and v.dtype != torch.float32:
                dtypes.add(str(v.dtype).removeprefix("torch."))
                v = v.float()  # fp16 / bf16 -> fp32 is exact
            self.state[k] = v
        if dtypes:
            report_notes.append(f"weights stored as {', '.join(sorted(dtypes))}: widened to float32 (exact)")
        self.taken: set[str] = set()

    def take(self, key: str) -> Tensor:
        if key not in self.state:
            raise UserError(
                f"{self.where} has no weight {key!r}, which its {self.config} imply: the weights do not "
                f"match the {self.config}, or were not written by {self.source}"
            )
        self.taken.add(key)
        return self.state[key]

    def has(self, key: str) -> bool:
        return key in self.state

    def check_all_taken(self) -> None:
        left = sorted(k for k in self.state if k not in self.taken)
        if left:
            raise UserError(
                f"{self.where} holds {len(left)} weights its {self.config} do not account for (e.g. "
                f"{', '.join(left[:3])}): the weights do not match the {self.config}"
            )


def put(
    out: dict[str, Tensor],
    target: dict[str, Tensor],
    ours: str,
    tensor: Tensor,
    theirs: str,
    config: str = "hparams",
) -> None:
    """``out[ours] = tensor`` when it has the shape our model needs there (``target``), else a
    ``UserError`` naming their key (``config``: what their options are called)."""
    expected = tuple(target[ours].shape)
    if tuple(tensor.shape) != expected:
        raise UserError(
            f"weight {theirs!r} has shape {tuple(tensor.shape)}, but the model its {config} describe needs "
            f"{expected} there: the weights do not match the {config}"
        )
    out[ours] = tensor.contiguous()


def check_output(output: Path) -> None:
    """``output`` is new (or an empty folder): a conversion never writes over anything."""
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise UserError(f"--output {output} already exists: choose a new folder for the converted checkpoint")
