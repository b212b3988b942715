"""Reading PyTorch files without running code from them: ``torch.load(weights_only=True)`` and two errors.

Every reader of ``.pt`` / ``.ckpt`` files (training state, pretrained VAEs, DALLE-pytorch checkpoints) goes
through ``load_plain`` and words its own message from the error it gets.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import load_failure


class UnsafeFileError(Exception):
    """The file holds Python objects besides tensors and plain data; ``str()`` names the refused global.
    Nothing in the file was run."""


class NotTorchFileError(Exception):
    """The file is not one ``torch.save`` wrote (text, truncated, another format); ``str()`` says why."""


def load_plain(path: str | Path, allowed: Sequence[Any] = ()) -> Any:
    """The tensors and plain containers in ``path``, on the CPU; ``allowed`` classes may also appear.

    Raises ``UnsafeFileError``, or ``NotTorchFileError`` for anything else that stops the load (an
    unreadable file included)."""
    context = torch.serialization.safe_globals(list(allowed)) if allowed else contextlib.nullcontext()
    try:
        with context:
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        why = load_failure(e)
        if "GLOBAL" in why:
            raise UnsafeFileError(why) from None
        raise NotTorchFileError(why) from None  # not a pickle torch wrote: text, a truncated download
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise NotTorchFileError(load_failure(e)) from None
