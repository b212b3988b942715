"""A model's blocks: the units that ``--compile`` compiles and FSDP shards one by one.

A model names them with a ``blocks()`` method (DALL-E's transformer branches, the VAE's encoder and
decoder, the diffusion prior's layers, the decoder's UNet blocks); a model that carries a frozen part (the
prior's CLIP, DALL-E's VAE) lists that part's blocks too, since it runs in every training step.
"""

from __future__ import annotations

from torch import nn


def blocks_of(module: nn.Module | None) -> list[nn.Module]:
    """``module.blocks()``, or none for a module that names none (or no module)."""
    named = getattr(module, "blocks", None)
    return list(named()) if named is not None else []
