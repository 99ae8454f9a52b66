"""Pruning keep-masks held at one bit per weight.

A pruned model carries a keep-mask for every pruned linear so that later stages (retraining,
GPTQ, trimming, saving) keep its zeros. As bool tensors these take one byte per weight: 101 MiB
for SmolLM2's 106 M block-linear weights, a third of the prune stage's whole memory increase.
`MaskStore` is the dict that `Model.masks` is: it takes and gives bool tensors, and holds each
one packed eight to a byte (13 MiB there). A mask is unpacked only while a caller uses it.

Bit order is the one `sparse_io` stores on disk: element k of the row-major flattened mask is
bit (k % 8) of byte k // 8, least significant bit first.
"""
from __future__ import annotations

import math
from collections.abc import MutableMapping

import torch

_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def pack_bits(keep: torch.Tensor) -> torch.Tensor:
    """uint8 [ceil(numel / 8)] holding `keep` (bool, any shape) flattened row-major."""
    flat = keep.reshape(-1)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    bits = flat.view(-1, 8).to(torch.uint8)
    return (bits * _BITS.to(bits.device)).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape) -> torch.Tensor:
    """The bool tensor of `shape` that `pack_bits` packed."""
    numel = math.prod(shape)
    if packed.numel() * 8 < numel:
        raise ValueError(f"{packed.numel()} packed bytes cannot hold a mask of shape {tuple(shape)}")
    bits = (packed[:, None] & _BITS.to(packed.device)[None, :]) != 0
    return bits.reshape(-1)[:numel].reshape(tuple(shape))


class MaskStore(MutableMapping):
    """linear name -> bool keep-mask, stored bit-packed. Reading a mask unpacks a fresh tensor,
    so change a mask by assigning it again, never in place."""

    def __init__(self, masks=None):
        self._packed: dict[str, tuple[torch.Tensor, tuple[int, ...]]] = {}
        if masks:
            self.update(masks)

    def __setitem__(self, name: str, keep: torch.Tensor) -> None:
        if not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool:
            raise TypeError(f"the keep-mask of {name} must be a bool tensor, got "
                            f"{getattr(keep, 'dtype', type(keep).__name__)}")
        self._packed[name] = (pack_bits(keep), tuple(keep.shape))

    def __getitem__(self, name: str) -> torch.Tensor:
        packed, shape = self._packed[name]
        return unpack_bits(packed, shape)

    def __delitem__(self, name: str) -> None:
        del self._packed[name]

    def __iter__(self):
        return iter(self._packed)

    def __len__(self) -> int:
        return len(self._packed)

    def nbytes(self) -> int:
        """Bytes the store holds (the packed bits)."""
        return sum(packed.numel() for packed, _ in self._packed.values())

    def __repr__(self) -> str:
        return f"MaskStore({len(self)} masks, {self.nbytes()} bytes)"
