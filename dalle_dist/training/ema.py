"""An exponential moving average of a model's trainable weights (``--ema_decay``), which DALL-E 2's
samplers use: diffusion models sample markedly better from averaged weights than from the last step's.

The average lives beside the model on every rank (the ranks' weights are equal, so are their averages),
travels in the training state (resume stays exact) and is written as ``ema.safetensors`` next to the
checkpoint's weights, which stay the raw ones training continues from.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import UserError

EMA_FILE = "ema.safetensors"


class EMA:
    """``shadow = d * shadow + (1 - d) * weights`` after each optimizer step, with ``d`` warming up as
    ``min(decay, (1 + n) / (10 + n))`` so that early averages are not dominated by the random start."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.decay, self.updates = decay, 0
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self.shadow = {name: params[name].detach().float().clone() for name in self.names}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        if any(params[name].numel() != self.shadow[name].numel() for name in self.names):
            raise UserError(
                "--ema_decay averages the whole weights on every rank, which DeepSpeed ZeRO-3 partitions: "
                "use --zero_stage 1 or 2, or --ema_decay 0"
            )
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        shadow = [self.shadow[name] for name in self.names]
        torch._foreach_lerp_(shadow, [params[name].detach().float() for name in self.names], 1.0 - decay)
        self.updates += 1

    def weights(self) -> dict[str, Tensor]:
        return {name: t.detach().cpu().contiguous() for name, t in self.shadow.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.weights()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)
