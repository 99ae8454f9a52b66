"""Schedules over optimizer steps: the learning rate, and gradual pruning's sparsity.

Learning rate: linear warm-up over `warmup` steps, then cosine decay to `min_ratio` x the peak.
Sparsity (Zhu & Gupta 2017, "To prune, or not to prune"): pruning happens every `every` steps
between steps t0 and t1, with s_t = s_f + (s_i - s_f) (1 - (t - t0) / (t1 - t0))^3: fast at
first, while many redundant weights remain, and slowly near the target.
"""
from __future__ import annotations

import math


def lr_factor(step: int, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cubic_sparsity(step: int, start: int, end: int, initial: float, final: float) -> float:
    if step <= start:
        return initial
    if step >= end:
        return final
    frac = (step - start) / (end - start)
    return final + (initial - final) * (1.0 - frac) ** 3


def pruning_steps(start: int, end: int, every: int) -> list[int]:
    """Steps at which the masks are recomputed (the last one reaches the final sparsity)."""
    steps = list(range(start, end, every))
    return steps + [end] if not steps or steps[-1] != end else steps
