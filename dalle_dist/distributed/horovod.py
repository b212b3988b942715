"""Horovod (``horovodrun``): ring all-reduce of gradients through ``hvd.DistributedOptimizer``."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import UserError
from .backend import DistributedBackend, TrainingEngine


def _hvd():
    try:
        import horovod.torch as hvd
    except ImportError:
        raise UserError(
            "--distributed_backend horovod needs Horovod: `make install-dev` or "
            "`pip install '.[horovod]'` (built with HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1)"
        ) from None
    return hvd


def _horovod_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("horovod") is not None


class HorovodTrainingEngine(TrainingEngine):
    """Horovod reduces gradients inside the optimizer: synchronise before clipping, then step without it."""

    def reduce_gradients(self) -> None:
        self.optimizer.synchronize()

    def stepping(self) -> contextlib.AbstractContextManager:
        return self.optimizer.skip_synchronize()


class HorovodBackend(DistributedBackend):
    """One process per device, started by ``horovodrun -np N``."""

    name = "horovod"
    aliases = ("hvd",)
    engine_class = HorovodTrainingEngine

    @classmethod
    def launched_here(cls) -> bool:
        # horovodrun sets HOROVOD_RANK with Gloo; with MPI (its default when built with MPI) Open MPI's own
        return "HOROVOD_RANK" in os.environ or ("OMPI_COMM_WORLD_RANK" in os.environ and _horovod_installed())

    def initialize(self) -> None:
        hvd = _hvd()
        hvd.init()
        self.device = self.pick_device(hvd.local_rank())
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

    @property
    def world_size(self) -> int:
        return _hvd().size()

    @property
    def rank(self) -> int:
        return _hvd().rank()

    @property
    def local_rank(self) -> int:
        return _hvd().local_rank()

    def barrier(self) -> None:
        _hvd().barrier()

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        # an explicit name: by default Horovod names it by type, and None on other ranks never matches
        return _hvd().broadcast_object(obj, root_rank=src, name="dalle_dist.broadcast_object")

    def gather_rows(self, rows: Tensor) -> tuple[Tensor, int]:
        gathered = _hvd().allgather(rows, name="dalle_dist.gather_rows")
        # Horovod's allgather backward averages each rank's slice over the ranks where torch's sums: the
        # same values, with the gradient scaled back up to the sum
        return gathered.detach() + (gathered - gathered.detach()) * self.world_size, self.rank * rows.shape[0]

    def gather_objects(self, obj: Any) -> list[Any]:
        return _hvd().allgather_object(obj, name="dalle_dist.gather_objects")

    def average(self, value: Tensor) -> Tensor:
        hvd = _hvd()
        return hvd.allreduce(value.detach().float().cpu(), op=hvd.Average)

    def wrap_optimizer(self, model: nn.Module, optimizer: torch.optim.Optimizer, ga_steps: int):
        hvd = _hvd()
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        # no hvd.broadcast_optimizer_state: on a fresh Adam it runs a zero-gradient step to create the state,
        # which advances Adam's step count and changes the first real update. Every rank builds the same
        # optimizer (and a resume loads the same state file on every rank), so there is nothing to send.
        return hvd.DistributedOptimizer(
            optimizer, named_parameters=trainable, backward_passes_per_step=ga_steps
        )

    def min_max(self, value: Tensor) -> tuple[Tensor, Tensor]:
        hvd = _hvd()
        return hvd.allreduce(value, op=hvd.Min), hvd.allreduce(value, op=hvd.Max)

    def shutdown(self) -> None:
        _hvd().shutdown()
