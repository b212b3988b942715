"""Distributed backends: the only package that imports deepspeed, horovod or torch.distributed."""

from .backend import BackendConfig, DistributedBackend, Precision, TrainingEngine
from .registry import BACKENDS, backend_from_config, backend_from_name

__all__ = [
    "BACKENDS",
    "BackendConfig",
    "DistributedBackend",
    "Precision",
    "TrainingEngine",
    "backend_from_config",
    "backend_from_name",
]
