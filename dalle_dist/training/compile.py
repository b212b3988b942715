"""``--compile``: regional compilation of a model's training step.

``torch.compile`` is applied in place to each of a model's blocks (``blocks()``: DALL-E's and CLIP's
transformer branches, the VAE's encoder and decoder), not to the whole model: the branches of every layer
share one graph, so compile time does not grow with depth. It runs after the engine has wrapped (DDP,
DeepSpeed) or sharded (FSDP) the model, and in-place compilation keeps the parameter names, so
checkpoints are the same as eager runs'. A model without ``blocks`` is compiled whole.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..models.blocks import blocks_of


def regions(model: nn.Module) -> list[nn.Module]:
    """The modules ``--compile`` compiles in ``model``."""
    return blocks_of(model) or [model]


def compile_regions(model: nn.Module) -> int:
    """Compile ``model``'s regions in place (fixed shapes: a new batch shape compiles once more); returns
    how many."""
    found = regions(model)
    for region in found:
        region.compile(dynamic=False)
    return len(found)


def report() -> str:
    """What compiling cost this process so far: graphs built and seconds spent (forward and backward)."""
    from torch._dynamo import utils  # its counters are internal: read defensively

    graphs = utils.counters["stats"].get("unique_graphs", 0)
    times = getattr(utils, "compilation_time_metrics", {})
    seconds = sum(sum(times.get(key, ())) for key in ("_compile.compile_inner", "backward._backward_impl"))
    return f"--compile: {graphs} graphs compiled in {seconds:.1f} s"


@contextlib.contextmanager
def eager() -> Iterator[None]:
    """Run compiled regions eagerly inside: sampling calls them at a new sequence offset each step, which
    would compile a graph per offset (the cached decode step has its own compiled form, ``generate.py
    --compile``)."""
    with torch.compiler.set_stance("force_eager"):
        yield
