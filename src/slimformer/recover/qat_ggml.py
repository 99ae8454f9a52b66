"""Distillation on a GGML grid: a GgmlLinear trains as a fake-quantized fp32 weight on the same
fixed grid (every sub-block's scale and min stay as the blocks store them, so the model at step
0 is exactly the quantized one and the trained model exports into the same blocks bit for bit).
Rounding passes gradients straight through inside the grid's range, as in qat.py."""
from __future__ import annotations

import torch
from torch import nn

from ..nn.ggml_linear import GgmlLinear


class FakeGgmlLinear(nn.Module):
    """Trainable stand-in of a GgmlLinear; `weight` is what optimizers see."""

    def __init__(self, g: GgmlLinear):
        super().__init__()
        self.grid = g.grid()
        self.in_features, self.out_features = g.in_features, g.out_features
        self.weight = nn.Parameter(g.dequantized().clone())
        self.bias = nn.Parameter(g.bias.clone()) if g.bias is not None else None
        # one scale (and min) per sub-block, broadcast over its columns in forward: no weight-sized copies
        self.register_buffer("s", self.grid.s.clone())
        self.register_buffer("b", self.grid.b.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.grid.type
        w = self.weight.view(self.out_features, -1, t.sub)
        s, b = self.s[..., None], self.b[..., None]
        safe = torch.where(s == 0, torch.ones_like(s), s)
        r = (w - b) / safe
        u = torch.clamp(r + (torch.round(r) - r).detach() + t.zero, t.umin, t.umax)
        u = torch.where(s == 0, torch.full_like(u, t.zero), u)
        return nn.functional.linear(x, self.grid.value(u, s, b).reshape(self.out_features, -1), self.bias)

    @torch.no_grad()
    def to_quant(self) -> GgmlLinear:
        u = self.grid.quantize(self.weight.detach().float())
        return GgmlLinear.from_codes(u, self.grid, None if self.bias is None else self.bias.detach())

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, {self.grid.type.name} (fake-quantized)"
