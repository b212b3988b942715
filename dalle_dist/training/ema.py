"""An exponential moving average of a model's trainable weights (``--ema_decay``), which DALL-E 2's
samplers use: diffusion models sample markedly better from averaged weights than from the last step's.

The average lives beside the model on every rank (the ranks' weights are equal, so are their averages),
travels in the training state (resume stays exact) and is written as ``ema.safetensors`` next to the
checkpoint's weights, which stay the raw ones training continues from. Under FSDP2 each rank averages only
its shard of each weight (the shadow is cut like the parameter's DTensor at the first update), so the
average costs a rank its share of the model, not the whole; ``weights()`` then gathers it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..distributed.fsdp import gather_like, local_shard, shard_like
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
        self.sharded: dict[str, Tensor] = {}  # name -> its parameter, for the weights FSDP shards

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        current = [self._local(name, params[name]) for name in self.names]
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_([self.shadow[name] for name in self.names], current, 1.0 - decay)
        self.updates += 1

    def _local(self, name: str, param: Tensor) -> Tensor:
        """What this rank holds of ``param``; a sharded parameter's shadow is cut to match, once."""
        part = local_shard(param)
        if part is not param:
            if name not in self.sharded:
                self.sharded[name] = param
                self.shadow[name] = shard_like(param, self.shadow[name]).clone()
        elif part.numel() != self.shadow[name].numel():
            raise UserError(
                "--ema_decay averages the whole weights on every rank, which DeepSpeed ZeRO-3 partitions: "
                "use --zero_stage 1 or 2, --distributed_backend fsdp, or --ema_decay 0"
            )
        return part.detach().float()

    def weights(self) -> dict[str, Tensor]:
        """The whole average. Once sharded (FSDP2) a collective call: every rank must make it."""
        whole = {}
        for name in self.names:
            value = self.shadow[name]
            if name in self.sharded:
                value = gather_like(self.sharded[name], value)
            whole[name] = value.detach().cpu().contiguous()
        return whole

    def state_dict(self) -> dict[str, Any]:
        """Holds the whole average (``weights()``): a collective call once sharded."""
        return {"decay": self.decay, "updates": self.updates, "shadow": self.weights()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        for name, value in state["shadow"].items():
            if name in self.sharded:
                self.shadow[name] = shard_like(self.sharded[name], value.float()).clone()
            else:
                self.shadow[name].copy_(value)
