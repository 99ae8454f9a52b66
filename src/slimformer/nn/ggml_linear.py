"""GgmlLinear: a linear whose weight sits on a GGML type's grid (q4_k, q5_0, q6_k, ...), holding
the codes and the numbers its blocks store, so the GGUF export writes them as they are.

Stored (state_dict): `codes` uint8 [out, in] (u - umin), the grid's stored numbers (`d`, and per
type `m`, `dmin`, `sc`; see ggml_grid.py), optional `bias`. In PyTorch the layer multiplies with
the dequantized weight (kernel "simulated": the integer kernels for these blocks are llama.cpp's,
which is where such a model is served and timed); the weight is exactly the file's.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import UnsupportedModelError
from .ggml_grid import GgmlGrid, grid_from_stored
from .ggml_types import ggml_type
from .registry import register_module

def _stored_shapes(t, rows: int, cols: int) -> dict[str, tuple[tuple[int, int], torch.dtype]]:
    nb, nsub = cols // t.block, cols // t.sub
    if not t.super_scales:
        out = {"d": ((rows, nb), torch.float16)}
        if t.affine:
            out["m"] = ((rows, nb), torch.float16)
        return out
    if t.affine:
        return {"d": ((rows, nb), torch.float16), "dmin": ((rows, nb), torch.float16),
                "sc": ((rows, nsub), torch.uint8), "m": ((rows, nsub), torch.uint8)}
    return {"d": ((rows, nb), torch.float16), "sc": ((rows, nsub), torch.int8)}


@register_module("ggml_linear")
class GgmlLinear(nn.Module):
    kernel = "simulated"

    def __init__(self, in_features: int, out_features: int, type_name: str, bias: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.type = ggml_type(type_name)
        if not self.type.fits(in_features):
            raise ValueError(f"{self.type.name} needs widths that are multiples of {self.type.block}")
        self.register_buffer("codes", torch.zeros(out_features, in_features, dtype=torch.uint8))
        self._stored_names = []
        for name, (shape, dtype) in _stored_shapes(self.type, out_features, in_features).items():
            self.register_buffer(name, torch.zeros(shape, dtype=dtype))
            self._stored_names.append(name)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._cache: dict = {}

    @classmethod
    def from_codes(cls, u: torch.Tensor, grid: GgmlGrid, bias: torch.Tensor | None = None) -> "GgmlLinear":
        rows, cols = u.shape
        m = cls(cols, rows, grid.type.name, bias is not None)
        m.codes.copy_((u.to(torch.int16) - grid.type.umin).to(torch.uint8))
        for name in m._stored_names:
            getattr(m, name).copy_(grid.stored[name])
        if bias is not None:
            m.bias.copy_(bias.float())
        return m

    def describe(self) -> dict:
        return {"ggml": self.type.name, "in": self.in_features, "out": self.out_features, "bias": self.bias is not None}

    @classmethod
    def from_description(cls, desc: dict) -> "GgmlLinear":
        return cls(desc["in"], desc["out"], desc["ggml"], desc["bias"])

    def to_onnx(self, g, x: str, name: str, lower) -> str:
        raise UnsupportedModelError(f"{name} holds {self.type.name} blocks, which are llama.cpp's; export the "
                                    "model as gguf")

    def grid(self) -> GgmlGrid:
        return grid_from_stored(self.type, {n: getattr(self, n) for n in self._stored_names})

    def u(self) -> torch.Tensor:
        """The codes u (t.umin..t.umax), int16 [out, in]."""
        return self.codes.to(torch.int16) + self.type.umin

    def dequantized(self) -> torch.Tensor:
        return self.grid().dequantize(self.u())

    @property
    def weight_bytes(self) -> int:
        return self.out_features * self.type.row_bytes(self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self._cache.get("weight")
        if w is None or w.device != x.device:
            w = self._cache["weight"] = self.dequantized().to(x.device)
        return nn.functional.linear(x.to(w.dtype), w, self.bias).to(x.dtype)

    def __getstate__(self):  # copies (deepcopy, pickle) do not carry the dequantized weight
        state = dict(super().__getstate__())
        state["_cache"] = {}
        return state

    def _load_from_state_dict(self, *args, **kwargs):
        self._cache = {}
        return super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, {self.type.name} ({self.type.bpw:g} bpw), kernel=simulated"
