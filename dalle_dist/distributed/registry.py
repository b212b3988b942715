"""Choosing a backend by name (``--distributed_backend``) or from the launcher's environment."""

from __future__ import annotations

from ..errors import UserError
from .backend import BackendConfig, DistributedBackend
from .ddp import DDPBackend
from .deepspeed import DeepSpeedBackend
from .fsdp import FSDPBackend
from .horovod import HorovodBackend
from .single import SingleBackend

# launchers are recognised in this order; single comes last as the fallback
BACKENDS: dict[str, type[DistributedBackend]] = {
    cls.name: cls for cls in (HorovodBackend, DeepSpeedBackend, FSDPBackend, DDPBackend, SingleBackend)
}


def backend_from_name(name: str | None, device: str = "auto") -> DistributedBackend:
    """The backend called ``name`` (or an alias); with no name, the one whose launcher started us."""
    if name is None:
        for cls in BACKENDS.values():
            if cls.launched_here():
                return cls(device)
        return SingleBackend(device)
    for cls in BACKENDS.values():
        if name == cls.name or name in cls.aliases:
            return cls(device)
    known = sorted({n for cls in BACKENDS.values() for n in (cls.name, *cls.aliases)})
    raise UserError(f"unknown --distributed_backend {name!r}: choose from {', '.join(known)}")


def backend_from_config(config: BackendConfig) -> DistributedBackend:
    """The backend ``config`` names, configured (not yet initialised): its ``config`` is what it will run."""
    backend = backend_from_name(config.name, config.device)
    backend.configure(config)
    return backend
