"""LowRankLinear: W [out, in] ~ B [out, r] @ A [r, in], run as two smaller linears (factorised by
trim/lowrank.py)."""
from __future__ import annotations

import torch
from torch import nn

from .registry import register_module


@register_module("low_rank")
class LowRankLinear(nn.Module):
    """y = b(a(x)): `a` in -> rank without bias, `b` rank -> out with the original bias."""

    def __init__(self, a: nn.Linear, b: nn.Linear):
        super().__init__()
        self.a, self.b = a, b

    @classmethod
    def empty(cls, n_in: int, rank: int, n_out: int, bias: bool) -> "LowRankLinear":
        return cls(nn.Linear(n_in, rank, bias=False), nn.Linear(rank, n_out, bias=bias))

    def describe(self) -> dict:
        return {"in": self.in_features, "rank": self.rank, "out": self.out_features, "bias": self.b.bias is not None}

    @classmethod
    def from_description(cls, desc: dict) -> "LowRankLinear":
        return cls.empty(desc["in"], desc["rank"], desc["out"], desc["bias"])

    def to_onnx(self, g, x: str, name: str, lower) -> str:
        g.counts["low_rank"] = g.counts.get("low_rank", 0) + 1
        return lower(g, lower(g, x, self.a, f"{name}.a"), self.b, f"{name}.b")

    @property
    def in_features(self) -> int:
        return self.a.in_features

    @property
    def out_features(self) -> int:
        return self.b.out_features

    @property
    def rank(self) -> int:
        return self.a.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))
