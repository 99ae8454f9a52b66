"""Compressed storage of pruned weights in safetensors ("bitmask-v1").

For a pruned weight `W` of shape [rows, cols] with keep-mask M, three tensors replace it:
  `<name>.__bitmask`  uint8 [ceil(rows*cols / 8)]: M flattened row-major; element k is bit
                      (k % 8) of byte k // 8 (least significant bit first);
  `<name>.__values`   W's dtype [M.sum()]: the kept values, row-major;
  `<name>.__shape`    int64 [2]: rows, cols.
At 50 % sparsity an fp32 weight takes 16.5 bits per element instead of 32. An N:M mask is stored
the same way: for 2:4, 1 bit per weight, the same size as 2-bit indices for 2 of every 4.
"""
from __future__ import annotations

import torch

from .masks import pack_bits, unpack_bits

FORMAT = "bitmask-v1"
SUFFIXES = (".__bitmask", ".__values", ".__shape")


def pack(name: str, weight: torch.Tensor, keep: torch.Tensor) -> dict[str, torch.Tensor]:
    return {f"{name}.__bitmask": pack_bits(keep),
            f"{name}.__values": weight.reshape(-1)[keep.reshape(-1)].contiguous(),
            f"{name}.__shape": torch.tensor(list(weight.shape), dtype=torch.int64)}


def unpack(name: str, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(dense weight, keep-mask) from the three stored tensors."""
    shape = tuple(tensors[f"{name}.__shape"].tolist())
    keep = unpack_bits(tensors[f"{name}.__bitmask"], shape)
    values = tensors[f"{name}.__values"]
    dense = torch.zeros(shape, dtype=values.dtype)
    dense[keep] = values
    return dense, keep


def packed_names(keys) -> list[str]:
    return sorted(k[: -len(".__bitmask")] for k in keys if k.endswith(".__bitmask"))
