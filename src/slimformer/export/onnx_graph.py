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

OPSET = 21  # LayerNormalization (17), Gelu (20), per-axis QuantizeLinear; ONNX Runtime runs it on CPU


class Graph:
    """Nodes and initializers with unique names; `op` returns the output name(s)."""

    def __init__(self):
        from onnx import helper
        self.helper = helper
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
    """x [..., in] -> [..., out] for any linear slimformer produces."""
    from ..quant.modules import QuantLinear
    from ..trim.lowrank import LowRankLinear
    if isinstance(mod, LowRankLinear):
        g.counts["low_rank"] = g.counts.get("low_rank", 0) + 1
        return linear(g, linear(g, x, mod.a, f"{name}.a"), mod.b, f"{name}.b")
    if isinstance(mod, QuantLinear):
        return _quant_linear(g, x, mod, name)
    if not isinstance(mod, nn.Linear):
        raise TypeError(f"{name}: {type(mod).__name__} has no ONNX form")
    g.counts["fp32"] = g.counts.get("fp32", 0) + 1
    y = g.op("MatMul", [x, g.const(mod.weight.detach().t(), f"{name}.weight_t")])
    return g.op("Add", [y, g.const(mod.bias, f"{name}.bias")]) if mod.bias is not None else y


def _quant_linear(g: Graph, x: str, mod, name: str) -> str:
    bias = g.const(mod.bias, f"{name}.bias") if mod.bias is not None else None
    if mod.act == "none":  # weight-only: ONNX Runtime has no standard op for it on CPU
        g.counts["weight_only_dequantized"] = g.counts.get("weight_only_dequantized", 0) + 1
        w = mod.dequantized()
        if mod.input_scale is not None:
            w = w * mod.input_scale[None, :]
        y = g.op("MatMul", [x, g.const(w.t(), f"{name}.weight_t")])
        return g.op("Add", [y, bias]) if bias else y
    if mod.input_scale is not None:
        x = g.op("Mul", [x, g.const(mod.input_scale, f"{name}.input_scale")])
    codes = g.const(mod.codes().t(), f"{name}.qweight_t", dtype=np.int8)  # [in, out]
    w_scale = mod.scales[:, 0].float()
    if mod.act == "static":
        g.counts["w8a8_static"] = g.counts.get("w8a8_static", 0) + 1
        xq = g.op("QuantizeLinear", [x, g.const(mod.act_scale, f"{name}.act_scale"),
                                     g.const(np.uint8(128), f"{name}.act_zero", dtype=np.uint8)])
        acc = g.op("MatMulInteger", [xq, codes, f"{name}.act_zero"])
        y = g.op("Mul", [g.op("Cast", [acc], to=1), g.const(w_scale * mod.act_scale, f"{name}.out_scale")])
    elif mod.granularity == "tensor":
        g.counts["w8a8_dynamic_tensor"] = g.counts.get("w8a8_dynamic_tensor", 0) + 1
        xq, xs, xz = g.op("DynamicQuantizeLinear", [x], n_out=3)
        acc = g.op("MatMulInteger", [xq, codes, xz])
        scale = g.op("Mul", [xs, g.const(w_scale, f"{name}.scales")])
        y = g.op("Mul", [g.op("Cast", [acc], to=1), scale])
    else:
        g.counts["w8a8_dynamic_token"] = g.counts.get("w8a8_dynamic_token", 0) + 1
        y = _per_token(g, x, codes, mod, name, w_scale)
    return g.op("Add", [y, bias]) if bias else y


def _per_token(g: Graph, x: str, codes: str, mod, name: str, w_scale: torch.Tensor) -> str:
    """slimformer's per-token asymmetric grid, written out: s = (max(hi,0) - min(lo,0)) / 255,
    z = round(-lo / s) (uint8, i.e. slimformer's z + 128), q = sat(round(x / s) + z)."""
    shape = g.op("Shape", [x])
    x2 = g.op("Reshape", [x, g.const(np.array([-1, mod.in_features]), dtype=np.int64)])
    axes = g.const(np.array([1]), dtype=np.int64)
    zero = g.const(np.float32(0))
    lo = g.op("Min", [g.op("ReduceMin", [x2, axes], keepdims=1), zero])
    hi = g.op("Max", [g.op("ReduceMax", [x2, axes], keepdims=1), zero])
    s = g.op("Div", [g.op("Sub", [hi, lo]), g.const(np.float32(255))])
    s = g.op("Where", [g.op("Greater", [s, zero]), s, g.const(np.float32(1))])
    z = g.op("Clip", [g.op("Round", [g.op("Div", [g.op("Neg", [lo]), s])]), zero, g.const(np.float32(255))])
    flat = g.const(np.array([-1]), dtype=np.int64)
    z_u8 = g.op("Cast", [g.op("Reshape", [z, flat])], to=2)  # uint8 [M]
    xq = g.op("QuantizeLinear", [x2, g.op("Reshape", [s, flat]), z_u8], axis=0)
    acc = g.op("MatMulInteger", [xq, codes])  # int32 [M, out], zero points not yet removed
    colsum = g.const(mod.codes().sum(1, dtype=torch.int32)[None, :], f"{name}.qweight_colsum", dtype=np.int32)
    acc = g.op("Sub", [acc, g.op("Mul", [g.op("Cast", [z], to=6), colsum])])
    y = g.op("Mul", [g.op("Mul", [g.op("Cast", [acc], to=1), s]), g.const(w_scale, f"{name}.scales")])
    out_shape = g.op("Concat", [g.op("Slice", [shape, g.const(np.array([0]), dtype=np.int64),
                                               g.const(np.array([-1]), dtype=np.int64)]),
                                g.const(np.array([mod.out_features]), dtype=np.int64)], axis=0)
    return g.op("Reshape", [y, out_shape])
