"""``--flops_profiler``: profile training steps, print per-module FLOPs and per-op time, then stop.

Engines with a profiler of their own (DeepSpeed's flops profiler) supply it through
``TrainingEngine.profiler``;
everything else gets torch's, over two steps: ``torch.profiler`` times every operator of the first, and
``FlopCounterMode`` counts the FLOPs of the second (forward + backward in total, and each module's
forward); counting in a step of its own keeps the counter's Python overhead out of the timings.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

# the first step profiled: step 0 pays for one-off work (allocator growth, kernel selection, lazy init)
PROFILE_STEP = 1
MODULE_DEPTH = 6  # DALLE.transformer.attns.0.fn.to_qkv


class StepProfiler:
    """Runs one profiling context around each of the training steps from ``start`` on (``contexts()``
    makes them when that step comes), then tells the loop to stop. ``start < 0``: never profiles."""

    def __init__(self, start: int, contexts: Callable[[], list[contextlib.AbstractContextManager]]) -> None:
        self.start, self.contexts = start, contexts
        self.pending: list[contextlib.AbstractContextManager] | None = None
        self.current: contextlib.ExitStack | None = None

    def before_batch(self, step: int) -> None:
        """Called before every micro-batch: a profiled step spans all micro-batches up to its update."""
        if self.pending is None and step == self.start:
            self.pending = self.contexts()
        if self.pending and self.current is None:
            self.current = contextlib.ExitStack()
            self.current.enter_context(self.pending.pop(0))

    def after_step(self) -> bool:
        """Called after every optimizer step; True once the last profiled step is done (it printed)."""
        if self.current is None:
            return False
        self.current.close()
        self.current = None
        return not self.pending


def torch_profilers(
    model: nn.Module, device: torch.device, log: Callable[[str], None]
) -> list[contextlib.AbstractContextManager]:
    """One context per profiled step: operator times, then FLOPs (in total, and forward per module)."""
    return [_time_operators(device, log), _count_flops(model, log)]


@contextlib.contextmanager
def _time_operators(device: torch.device, log: Callable[[str], None]) -> Iterator[None]:
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        yield
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    log("flops profiler: time per operator in one training step")
    log(prof.key_averages().table(sort_by=sort, row_limit=25))


@contextlib.contextmanager
def _count_flops(model: nn.Module, log: Callable[[str], None]) -> Iterator[None]:
    counter = FlopCounterMode(display=False)
    forward: dict[str, int] = {}
    started: list[int] = []

    def before(module, args):
        started.append(counter.get_total_flops())

    def after(name):
        def hook(module, args, output):
            forward[name] = forward.get(name, 0) + counter.get_total_flops() - started.pop()

        return hook

    handles = []
    for name, module in model.named_modules():
        if name.count(".") < MODULE_DEPTH:
            handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after(name or type(model).__name__)))
    try:
        with counter:
            yield
    finally:
        for handle in handles:
            handle.remove()
    total = counter.get_total_flops()
    log(
        f"flops profiler: {total / 1e9:.3f} GFLOP in one training step (forward + backward); "
        "forward FLOPs per module (a module's own and its children's):"
    )
    log(module_table(forward))


def module_table(flops: dict[str, int]) -> str:
    """Rows of ``module  MFLOP  share of the top module``, parents first."""
    top = max(flops.values(), default=0)
    lines = [f"{'module':<52}{'MFLOP':>14}{'share':>9}"]
    for name in sorted(flops):  # parents sort before their children
        if flops[name] == 0:
            continue
        share = flops[name] / top if top else 0.0
        lines.append(f"{name:<52}{flops[name] / 1e6:>14.3f}{share:>9.1%}")
    return "\n".join(lines)
