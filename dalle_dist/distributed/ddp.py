"""torchrun + PyTorch DistributedDataParallel (gloo on CPU, NCCL on GPUs)."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import UserError
from .backend import DistributedBackend
from .elastic import init_process_group


class DDPBackend(DistributedBackend):
    """One process per device, started by ``torchrun``; gradients averaged by DDP."""

    name = "ddp"
    aliases = ("torchrun",)

    @classmethod
    def launched_here(cls) -> bool:
        return "TORCHELASTIC_RUN_ID" in os.environ or all(
            k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")
        )

    def initialize(self) -> None:
        if not DDPBackend.launched_here():  # torchrun's environment (FSDP's too)
            raise UserError(
                f"--distributed_backend {self.name} needs a launcher: "
                f"run `torchrun --nproc_per_node N train_dalle.py --distributed_backend {self.name} ...`"
            )
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.device = self.pick_device(local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if not dist.is_initialized():
            init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self._local_rank = local_rank

    @property
    def world_size(self) -> int:
        return dist.get_world_size()

    @property
    def rank(self) -> int:
        return dist.get_rank()

    @property
    def local_rank(self) -> int:
        return self._local_rank

    def barrier(self) -> None:
        dist.barrier()

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def gather_rows(self, rows: Tensor) -> tuple[Tensor, int]:
        from torch.distributed.nn.functional import all_gather  # the autograd-aware all_gather

        return torch.cat(all_gather(rows), dim=0), self.rank * rows.shape[0]

    def gather_objects(self, obj: Any) -> list[Any]:
        found: list[Any] = [None] * self.world_size
        dist.all_gather_object(found, obj)
        return found

    def average(self, value: Tensor) -> Tensor:
        value = value.detach().clone().to(self.device, torch.float32)
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value / self.world_size

    def wrap_model(self, model: nn.Module) -> nn.Module:
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # frozen parameters (the VAE inside DALLE) are left out of gradient reduction by DDP itself
        return DistributedDataParallel(model, device_ids=device_ids)

    def min_max(self, value: Tensor) -> tuple[Tensor, Tensor]:
        low, high = value.to(self.device), value.clone().to(self.device)
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        return low.cpu(), high.cpu()

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
