"""Distributed backends: the only package that imports deepspeed, horovod or torch.distributed."""

from .backend import DistributedBackend, Wrapped
from .registry import BACKENDS, backend_from_name

__all__ = ["BACKENDS", "DistributedBackend", "Wrapped", "backend_from_name"]
