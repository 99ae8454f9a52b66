"""A small ONNX graph builder and the linear layers slimformer writes into graphs.

Linears are written from slimformer's own weights, so a trimmed layer has its trimmed shape and a
quantized one keeps slimformer's integer codes and scales (never re-quantized by ONNX Runtime):
- nn.Linear: MatMul with W^T, Add bias. A LowRankLinear: two of them.
- W8A8, dynamic per-tensor activations: DynamicQuantizeLinear (uint8, asymmetric, one range per
  call: exactly slimformer's per-tensor grid shifted by 128), MatMulInteger with the int8 codes,
  one Mul by act_scale * weight scales: ONNX Runtime's own dynamic-quantization pattern, which its
  optimizer fuses into one integer kernel.
- W8A8, dynamic per-token: each row's range computed in the graph, QuantizeLinear per row (axis 0),
  MatMulInteger, then the zero-point term (z_row * column sums of the codes) removed and the row
  and weight scales applied, as slimformer's int8_per_token kernel does.
- W8A8, static: QuantizeLinear with the calibrated scale (zero point 128, uint8), MatMulInteger.
- A smoothing vector that could not be folded (input_scale) is one Mul before quantization.
- Weight-only int8 / int4 layers are written dequantized (fp32 MatMul): ONNX Runtime's CPU kernels
  for them are not standard ops; `details` of the export counts such layers.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..nn.registry import is_compressed

OPSET = 21  # LayerNormalization (17), Gelu (20), per-axis QuantizeLinear; ONNX Runtime runs it on CPU


class Graph:
    """Nodes and initializers with unique names; `op` returns the output name(s)."""

    def __init__(self, form: str = "ort"):
        from onnx import helper
        self.helper = helper
        self.form = form  # how quantized linears are written: "ort" (integer ops) or "qdq" (quant_linear_qdq.py)
        self.nodes, self.inits, self._n = [], [], 0
        self.counts: dict[str, int] = {}

    def _name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, value, name: str | None = None, dtype=np.float32) -> str:
        from onnx import numpy_helper
        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        arr = np.ascontiguousarray(arr.astype(dtype) if dtype is not None else arr)
        name = name or self._name("const")
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, domain: str = "", **attrs):
        outs = [self._name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(self.helper.make_node(op_type, inputs, outs, domain=domain or None, **attrs))
        return outs[0] if n_out == 1 else outs


def linear(g: Graph, x: str, mod: nn.Module, name: str) -> str:
    """x [..., in] -> [..., out] for any linear slimformer produces: compressed modules lower
    themselves (their `to_onnx`, nn/registry.py), plain linears are a MatMul (+ Add)."""
    if is_compressed(mod):
        return mod.to_onnx(g, x, name, linear)
    if not isinstance(mod, nn.Linear):
        raise TypeError(f"{name}: {type(mod).__name__} has no ONNX form")
    g.counts["fp32"] = g.counts.get("fp32", 0) + 1
    y = g.op("MatMul", [x, g.const(mod.weight.detach().t(), f"{name}.weight_t")])
    return g.op("Add", [y, g.const(mod.bias, f"{name}.bias")]) if mod.bias is not None else y
