"""One process, one device: the default backend."""

from __future__ import annotations

from .backend import DistributedBackend


class SingleBackend(DistributedBackend):
    """No process group; everything is local."""

    name = "single"
    aliases = ("dummy",)

    def initialize(self) -> None:
        self.device = self.pick_device(0)

    @property
    def world_size(self) -> int:
        return 1

    @property
    def rank(self) -> int:
        return 0
