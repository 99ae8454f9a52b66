"""The ONNX form of a QuantLinear (QuantLinear.to_onnx): int8 codes as integer nodes that ONNX
Runtime runs on its integer kernels, computing what the PyTorch kernels compute.

The weight codes are stored as uint8 (code + 128, zero point 128): ONNX Runtime's uint8 x int8
path on CPUs without VNNI (AVX2) adds pairs of products into int16 with saturation (VPMADDUBSW,
as its quantization documentation warns), which full-range int8 weights overflow; its uint8 x
uint8 path widens first and is exact on every x86 CPU."""
from __future__ import annotations

import numpy as np
import torch


def quant_linear_to_onnx(g, x: str, mod, name: str) -> str:
    y = _linear(g, x, mod, name)
    if mod.out_scale is None:
        return y
    # the output's static grid as a Q/DQ pair: OpenVINO fuses it into the integer attention product
    # that reads it; ONNX Runtime computes the same rounding in float
    g.counts["int8_output"] = g.counts.get("int8_output", 0) + 1
    z = 0 if mod.out_zero is None else int(mod.out_zero)
    scale = g.const(mod.out_scale, f"{name}.output_scale")
    if g.form == "qdq":  # signed: OpenVINO's int8 attention takes i8 inputs
        zero = g.const(np.int8(z), f"{name}.output_zero", dtype=np.int8)
    else:  # ONNX Runtime's Q/DQ transforms expect the uint8 form used everywhere else here
        zero = g.const(np.uint8(z + 128), f"{name}.output_zero", dtype=np.uint8)
    return g.op("DequantizeLinear", [g.op("QuantizeLinear", [y, scale, zero]), scale, zero])


def _linear(g, x: str, mod, name: str) -> str:
    bias = g.const(mod.bias, f"{name}.bias") if mod.bias is not None else None
    if g.form == "qdq":  # OpenVINO (quant_linear_qdq.py)
        from .quant_linear_qdq import quant_linear_to_qdq
        y = quant_linear_to_qdq(g, x, mod, name)
        return g.op("Add", [y, bias]) if bias else y
    if mod.act == "none":  # weight-only: ONNX Runtime has no standard op for it on CPU
        g.counts["weight_only_dequantized"] = g.counts.get("weight_only_dequantized", 0) + 1
        w = mod.dequantized()
        if mod.input_scale is not None:
            w = w * mod.input_scale[None, :]
        y = g.op("MatMul", [x, g.const(w.t(), f"{name}.weight_t")])
        return g.op("Add", [y, bias]) if bias else y
    if mod.input_scale is not None:
        x = g.op("Mul", [x, g.const(mod.input_scale, f"{name}.input_scale")])
    codes = g.const((mod.codes().t().to(torch.int16) + 128), f"{name}.qweight_t", dtype=np.uint8)  # [in, out]
    w_zero = g.const(np.uint8(128), f"{name}.qweight_zero", dtype=np.uint8)
    w_scale = mod.scales[:, 0].float()
    if mod.act == "static":
        g.counts["w8a8_static"] = g.counts.get("w8a8_static", 0) + 1
        zero = 128 + (0 if mod.act_zero is None else int(mod.act_zero))  # the int8 grid's z, as uint8
        xq = g.op("QuantizeLinear", [x, g.const(mod.act_scale, f"{name}.act_scale"),
                                     g.const(np.uint8(zero), f"{name}.act_zero", dtype=np.uint8)])
        acc = g.op("MatMulInteger", [xq, codes, f"{name}.act_zero", w_zero])
        y = g.op("Mul", [g.op("Cast", [acc], to=1), g.const(w_scale * mod.act_scale, f"{name}.out_scale")])
    elif mod.granularity == "tensor":
        g.counts["w8a8_dynamic_tensor"] = g.counts.get("w8a8_dynamic_tensor", 0) + 1
        xq, xs, xz = g.op("DynamicQuantizeLinear", [x], n_out=3)
        acc = g.op("MatMulInteger", [xq, codes, xz, w_zero])
        scale = g.op("Mul", [xs, g.const(w_scale, f"{name}.scales")])
        y = g.op("Mul", [g.op("Cast", [acc], to=1), scale])
    else:
        g.counts["w8a8_dynamic_token"] = g.counts.get("w8a8_dynamic_token", 0) + 1
        y = _per_token(g, x, codes, w_zero, mod, name, w_scale)
    return g.op("Add", [y, bias]) if bias else y


def _per_token(g, x: str, codes: str, w_zero: str, mod, name: str, w_scale: torch.Tensor) -> str:
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
    no_zero = g.const(np.uint8(0), f"{name}.act_no_zero", dtype=np.uint8)
    acc = g.op("MatMulInteger", [xq, codes, no_zero, w_zero])  # int32 [M, out], activation zero not yet removed
    colsum = g.const(mod.codes().sum(1, dtype=torch.int32)[None, :], f"{name}.qweight_colsum", dtype=np.int32)
    acc = g.op("Sub", [acc, g.op("Mul", [g.op("Cast", [z], to=6), colsum])])
    y = g.op("Mul", [g.op("Mul", [g.op("Cast", [acc], to=1), s]), g.const(w_scale, f"{name}.scales")])
    out_shape = g.op("Concat", [g.op("Slice", [shape, g.const(np.array([0]), dtype=np.int64),
                                               g.const(np.array([-1]), dtype=np.int64)]),
                                g.const(np.array([mod.out_features]), dtype=np.int64)], axis=0)
    return g.op("Reshape", [y, out_shape])
