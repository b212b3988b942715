"""Learning-rate schedule: warmup, then constant or cosine, times a decay factor that plateaus and
per-epoch exponential decay lower. Its state is part of the training checkpoint."""

from __future__ import annotations

import math
from typing import Any

import torch


class LRSchedule:
    """lr(step) = base * warmup(step) * shape(step) * decay."""

    def __init__(
        self,
        base_lr: float,
        *,
        kind: str = "constant",
        warmup_steps: int = 0,
        total_steps: int | None = None,
        min_lr: float = 1e-6,
        plateau_factor: float = 0.5,
        plateau_patience: int = 10,
        epoch_decay: float = 1.0,
    ) -> None:
        if kind not in ("constant", "cosine", "plateau"):
            raise ValueError(f"unknown lr schedule {kind!r}")
        self.base_lr, self.kind, self.warmup_steps = base_lr, kind, warmup_steps
        self.total_steps, self.min_lr = total_steps, min_lr
        self.plateau_factor, self.plateau_patience, self.epoch_decay = (
            plateau_factor,
            plateau_patience,
            epoch_decay,
        )
        self.decay = 1.0
        self.best = math.inf
        self.bad_evals = 0

    def lr(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based)."""
        lr = self.base_lr * self.decay
        if self.warmup_steps and step < self.warmup_steps:
            lr *= (step + 1) / self.warmup_steps
        elif self.kind == "cosine" and self.total_steps:
            progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
            lr = self.min_lr + (lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        return max(lr, self.min_lr) if self.decay < 1.0 else lr

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        lr = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def end_of_epoch(self) -> None:
        """Exponential decay per epoch (train_vae.py's --lr_decay_rate)."""
        self.decay *= self.epoch_decay

    def observe(self, loss: float) -> None:
        """Plateau decay: cut the rate when ``loss`` has not improved for ``plateau_patience`` checks."""
        if self.kind != "plateau":
            return
        if loss < self.best - 1e-8:
            self.best, self.bad_evals = loss, 0
            return
        self.bad_evals += 1
        if self.bad_evals > self.plateau_patience:
            self.decay *= self.plateau_factor
            self.bad_evals = 0

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay, self.best, self.bad_evals = state["decay"], state["best"], state["bad_evals"]
