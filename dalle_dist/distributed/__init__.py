"""Distributed backends: the only package that imports deepspeed, horovod or torch.distributed."""

from .backend import DistributedBackend, Precision, Wrapped
from .registry import BACKENDS, backend_from_name

__all__ = ["BACKENDS", "DistributedBackend", "Precision", "Wrapped", "backend_from_name"]
