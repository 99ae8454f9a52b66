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

FORMAT = "bitmask-v1"
SUFFIXES = (".__bitmask", ".__values", ".__shape")
_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def pack(name: str, weight: torch.Tensor, keep: torch.Tensor) -> dict[str, torch.Tensor]:
    flat = keep.reshape(-1)
    pad = (-flat.numel()) % 8
    bits = torch.cat([flat, flat.new_zeros(pad)]).view(-1, 8).to(torch.uint8)
    return {f"{name}.__bitmask": (bits * _BITS).sum(1, dtype=torch.uint8),
            f"{name}.__values": weight.reshape(-1)[flat].contiguous(),
            f"{name}.__shape": torch.tensor(list(weight.shape), dtype=torch.int64)}


def unpack(name: str, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(dense weight, keep-mask) from the three stored tensors."""
    shape = tuple(tensors[f"{name}.__shape"].tolist())
    numel = shape[0] * shape[1]
    packed = tensors[f"{name}.__bitmask"]
    keep = ((packed[:, None] & _BITS[None, :]) != 0).reshape(-1)[:numel]
    values = tensors[f"{name}.__values"]
    dense = torch.zeros(numel, dtype=values.dtype)
    dense[keep] = values
    return dense.view(shape), keep.view(shape)


def packed_names(keys) -> list[str]:
    return sorted(k[: -len(".__bitmask")] for k in keys if k.endswith(".__bitmask"))
