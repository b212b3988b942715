"""The ``--device`` choice of the single-process tools (generation, token encoding)."""

from __future__ import annotations

import torch

from .errors import UserError


def pick_device(choice: str) -> torch.device:
    """``auto`` is CUDA when visible, else the CPU; asking for CUDA without one is a user error."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible: use --device cpu or auto")
    return torch.device(choice)
