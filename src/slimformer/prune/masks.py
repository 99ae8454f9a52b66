"""Masks from importance scores (True = keep). Ties are broken by position, deterministically."""
from __future__ import annotations

import re

import torch

from ..errors import ConfigValueError

_NM = re.compile(r"^(\d+):(\d+)$")


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """"unstructured" -> None; "2:4" -> (2, 4): keep N of every M consecutive input weights."""
    if pattern == "unstructured":
        return None
    m = _NM.match(str(pattern))
    if not m or not 0 < int(m.group(1)) < int(m.group(2)):
        raise ConfigValueError(f"pattern {pattern!r} is not valid; use unstructured or N:M with 0 < N < M "
                               "(e.g. 2:4, 4:8)")
    return int(m.group(1)), int(m.group(2))


def _prune_lowest(score: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask over the last dim of `score`, removing its k lowest entries per row."""
    keep = torch.ones_like(score, dtype=torch.bool)
    if k > 0:
        idx = torch.topk(score, k, dim=-1, largest=False, sorted=False).indices
        keep.scatter_(-1, idx, False)
    return keep


def row_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Each output row loses the same fraction of its weights (Wanda's comparison group)."""
    return _prune_lowest(score, round(score.shape[1] * sparsity))


def layer_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The lowest fraction over the whole matrix (layer-wise magnitude pruning)."""
    return _prune_lowest(score.reshape(1, -1), round(score.numel() * sparsity)).view_as(score)


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the n largest of every m consecutive input weights of each row."""
    rows, cols = score.shape
    if cols % m:
        raise ConfigValueError(f"an N:M pattern needs input width divisible by {m}; a layer has {cols}")
    return _prune_lowest(score.reshape(rows, cols // m, m), m - n).view(rows, cols)
