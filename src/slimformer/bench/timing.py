"""Wall-clock timing with warm-up; median and p90 in milliseconds."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def synchronize() -> None:
    """Wait for queued CUDA work, so a timer read after it covers the kernels, not their launch
    (a no-op unless this process has used CUDA)."""
    import torch
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        synchronize()
        t0 = time.perf_counter()
        fn()
        synchronize()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def p90(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]
