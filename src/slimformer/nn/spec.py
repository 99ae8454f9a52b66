"""Integer grids for weights: bits, group size, symmetric or asymmetric, and the math on them.

A weight W [out, in] is split along the input dimension into groups of `group_size` columns
(0 = one group per row: per-channel). Each (row, group) has a scale s > 0 and an integer zero
point z; its values are stored as signed integers q in [-2^(b-1), 2^(b-1) - 1] and mean
w = s * (q - z). Symmetric grids have z = 0 and s = max|w| / (2^(b-1) - 1), or with `full_range`
s = m / -2^(b-1) where m is the largest-magnitude weight itself (signed; s may be negative): m
lands on code -2^(b-1), so all 2^b levels are used and the step is max|w| / 8 instead of / 7 for
int4 (llama.cpp's Q4_0 rule; weights on the other side beyond 7|s| clip by at most |s|). Asymmetric grids
span [min(w, 0), max(w, 0)] with s = (max - min) / (2^b - 1). Zero is always exactly
representable (q = z), so pruned weights stay exactly zero after quantization. A last group
narrower than `group_size` (in % group_size != 0, e.g. SmolLM2's 576 with groups of 128) is
allowed and simply has fewer columns.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class QuantSpec:
    bits: int = 8
    group_size: int = 0  # 0: per output channel (one group spanning the whole row)
    symmetric: bool = True
    full_range: bool = False  # symmetric: the largest-magnitude weight maps to code -2^(b-1)

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1))

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    @property
    def int8_rows(self) -> bool:
        """Symmetric per-channel codes that fit int8 (bits 8, or 7: codes on [-64, 63], for int8
        kernels that add pairs of uint8 x int8 products in int16, which 7 bits cannot overflow)."""
        return self.bits in (7, 8) and self.symmetric and self.group_size == 0

    def groups(self, in_features: int) -> int:
        g = self.group_size or in_features
        return -(-in_features // g)

    def width(self, in_features: int) -> int:
        return self.group_size or in_features

    def describe(self) -> str:
        g = f"g{self.group_size}" if self.group_size else "per-channel"
        return f"int{self.bits} {g} {'sym' if self.symmetric else 'asym'}{' full-range' if self.full_range else ''}"


def group_index(in_features: int, spec: QuantSpec) -> torch.Tensor:
    """Group of every input column, [in]."""
    return torch.arange(in_features) // spec.width(in_features)


def params_for(w: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of each row of `w` [rows, cols] taken as one group: ([rows], [rows])."""
    w = w.float()
    if spec.symmetric and spec.full_range:
        m = w.gather(1, w.abs().argmax(1, keepdim=True))[:, 0]
        scale = torch.where(m != 0, m / spec.qmin, torch.ones_like(m))
        return scale, torch.zeros_like(scale)
    if spec.symmetric:
        scale = w.abs().amax(1) / spec.qmax
        zero = torch.zeros_like(scale)
    else:
        lo = w.amin(1).clamp(max=0)
        hi = w.amax(1).clamp(min=0)
        scale = (hi - lo) / (2 ** spec.bits - 1)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.clamp(torch.round(spec.qmin - lo / scale), spec.qmin, spec.qmax)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero rows: any scale works
    return scale, zero


def quantize_with(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Integer codes of `w` [rows, cols] given per-row (or broadcastable) scale and zero."""
    if scale.dim() == 1:
        scale, zero = scale[:, None], zero[:, None]
    return torch.clamp(torch.round(w.float() / scale) + zero, spec.qmin, spec.qmax)


def quantize(W: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest: (q int8 [out, in], scales [out, groups], zeros int8 [out, groups])."""
    out_f, in_f = W.shape
    width = spec.width(in_f)
    q = torch.empty(out_f, in_f, dtype=torch.int8)
    scales = torch.empty(out_f, spec.groups(in_f))
    zeros = torch.empty(out_f, spec.groups(in_f), dtype=torch.int8)
    for g, c0 in enumerate(range(0, in_f, width)):
        block = W[:, c0:c0 + width]
        s, z = params_for(block, spec)
        q[:, c0:c0 + width] = quantize_with(block, s, z, spec).to(torch.int8)
        scales[:, g], zeros[:, g] = s, z.to(torch.int8)
    return q, scales, zeros


def dequantize(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    g = group_index(q.shape[1], spec)
    return (q.float() - zeros.float()[:, g]) * scales[:, g]


def fake_quantize(W: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """W rounded onto its grid, in floating point (what the model computes with)."""
    return dequantize(*quantize(W, spec), spec).to(W.dtype)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Two signed 4-bit codes per byte: column 2k in the low nibble, 2k+1 in the high one."""
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    if u.shape[1] % 2:
        u = torch.cat([u, torch.full_like(u[:, :1], 8)], 1)
    return u[:, 0::2] | (u[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    lo = (packed & 0x0F).to(torch.int8) - 8
    hi = (packed >> 4).to(torch.int8) - 8
    return torch.stack([lo, hi], -1).reshape(packed.shape[0], -1)[:, :in_features].contiguous()
