"""The interface the training loop talks to, whatever engine runs underneath.

A backend knows its process group (world size, ranks, barriers), how the data is split between ranks,
and how a model is trained under it: ``distribute`` wraps model, optimizer and scheduler into a
``Wrapped`` whose ``backward`` / ``step`` do what the engine needs (gradient accumulation, clipping,
averaging across ranks). The loop never branches on the engine's name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn


@dataclass
class Wrapped:
    """A model ready to train under a backend.

    ``model`` is what the loop calls (maybe an engine wrapper); ``module`` is the plain ``nn.Module``
    whose weights are saved. ``step`` returns True when the optimizer actually stepped (after
    ``ga_steps`` micro-batches).
    """

    model: nn.Module
    module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ga_steps: int = 1
    clip_grad_norm: float | None = None
    micro_step: int = 0
    last_grad_norm: float | None = None

    def backward(self, loss: Tensor) -> None:
        """Accumulate gradients of ``loss`` (scaled for accumulation)."""
        (loss / self.ga_steps).backward()

    def step(self) -> bool:
        """Finish a micro-batch; on the last one of an accumulation window clip, step and zero grads."""
        self.micro_step += 1
        if self.micro_step % self.ga_steps != 0:
            return False
        if self.clip_grad_norm:
            params = [p for p in self.module.parameters() if p.grad is not None]
            self.last_grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        return True

    def state_dict(self) -> dict[str, Any]:
        """Optimizer and scheduler state, for a training checkpoint."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "micro_step": self.micro_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.micro_step = int(state.get("micro_step", 0))


class DistributedBackend(ABC):
    """One way of running training processes: a single process, DDP, Horovod or DeepSpeed."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()

    def __init__(self, device: str = "auto") -> None:
        self.requested_device = device
        self.device = torch.device("cpu")

    @classmethod
    def launched_here(cls) -> bool:
        """Does the environment show this engine's launcher started the process?"""
        return False

    @abstractmethod
    def initialize(self) -> None:
        """Join the process group and pick this process's device."""

    @property
    @abstractmethod
    def world_size(self) -> int: ...

    @property
    @abstractmethod
    def rank(self) -> int: ...

    @property
    def local_rank(self) -> int:
        return 0

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank."""

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Send a picklable object from ``src`` to every rank (e.g. the tokenizer the root trained)."""
        return obj

    def average(self, value: Tensor) -> Tensor:
        """Mean of ``value`` across ranks, for logging."""
        return value

    def data_shard(self) -> tuple[int, int]:
        """``(shard index, number of shards)``: which part of every batch order this rank reads."""
        return self.rank, self.world_size

    def distribute(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any = None,
        *,
        ga_steps: int = 1,
        clip_grad_norm: float | None = None,
    ) -> Wrapped:
        """Wrap model, optimizer and scheduler for training under this backend."""
        return Wrapped(model, model, optimizer, scheduler, ga_steps=ga_steps, clip_grad_norm=clip_grad_norm)

    def shutdown(self) -> None:
        """Leave the process group."""

    def pick_device(self, local_rank: int = 0) -> torch.device:
        """``--device``: auto picks this rank's GPU when there is one, else the CPU."""
        requested = self.requested_device
        if requested == "auto":
            if torch.cuda.is_available():
                return torch.device("cuda", local_rank % torch.cuda.device_count())
            return torch.device("cpu")
        if requested == "cuda" and not torch.cuda.is_available():
            from ..errors import UserError

            raise UserError(
                "--device cuda was asked for but no CUDA GPU is visible: use --device cpu or auto"
            )
        if requested == "mps" and not torch.backends.mps.is_available():
            from ..errors import UserError

            raise UserError("--device mps was asked for but MPS is not available: use --device cpu or auto")
        if requested == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device(requested)
