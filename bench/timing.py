"""Wall-clock timing shared by the CPU benchmarks: every figure is a median (or the list) of timed calls
after warm-up calls that are not counted."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def times(fn: Callable[[], object], repeats: int = 7, warmup: int = 2) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn``, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def timed(fn: Callable[[], object], repeats: int = 7, warmup: int = 2) -> float:
    """The median of ``times``."""
    return statistics.median(times(fn, repeats, warmup))
