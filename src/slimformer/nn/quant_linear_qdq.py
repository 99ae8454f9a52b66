"""The QuantizeLinear / DequantizeLinear ("QDQ") form of a QuantLinear, for runtimes that fuse
QDQ patterns into their own integer kernels instead of running MatMulInteger (OpenVINO: its ONNX
frontend turns a Q -> DQ pair on an activation into FakeQuantize and a DQ on a constant into a
compressed weight, and its CPU plugin's low-precision transformations run the MatMul in int8).

The constants are slimformer's codes and scales as they are, never re-quantized:
- weights: DequantizeLinear(int8 codes^T [in, out], per-output-channel scales, zero point 0);
- static activations: QuantizeLinear -> DequantizeLinear with the calibrated scale and zero point
  (0 when symmetric), int8, which is slimformer's grid round(x / s) + z clamped to [-128, 127]
  exactly;
- dynamic activations: no constant range can describe them, so the activation stays float and
  the runtime quantizes it on the fly (OpenVINO's dynamic quantization of compressed-weight
  layers); the result is within int8 rounding of slimformer's, not bit-equal;
- weight-only int8: the DQ weight alone. Weight-only int4 (group-wise) is written dequantized,
  counted as such in the export's log.
A smoothing vector that could not be folded (input_scale) is one Mul first, as in the ONNX form.
"""
from __future__ import annotations

import numpy as np


def _count(g, key: str) -> None:
    g.counts[key] = g.counts.get(key, 0) + 1


def quant_linear_to_qdq(g, x: str, mod, name: str) -> str:
    """x [..., in] -> x @ W^T [..., out], without the bias."""
    if mod.input_scale is not None:
        x = g.op("Mul", [x, g.const(mod.input_scale, f"{name}.input_scale")])
    int8_rows = mod.spec.int8_rows
    if not int8_rows:  # group-wise or 4-bit codes: no per-channel DQ holds them
        _count(g, "weight_only_dequantized")
        return g.op("MatMul", [x, g.const(mod.dequantized().t(), f"{name}.weight_t")])
    w = g.op("DequantizeLinear", [g.const(mod.codes().t(), f"{name}.qweight_t", dtype=np.int8),
                                  g.const(mod.scales[:, 0].float(), f"{name}.scales"),
                                  g.const(np.zeros(mod.out_features, np.int8), f"{name}.qweight_zero",
                                          dtype=np.int8)], axis=1)
    if mod.act == "static":
        _count(g, "w8a8_static")
        scale = g.const(mod.act_scale, f"{name}.act_scale")
        z = 0 if mod.act_zero is None else int(mod.act_zero)  # asymmetric: OpenVINO runs it as uint8
        zero = g.const(np.int8(z), f"{name}.act_zero", dtype=np.int8)
        x = g.op("DequantizeLinear", [g.op("QuantizeLinear", [x, scale, zero]), scale, zero])
    else:
        _count(g, "w8a8_dynamic" if mod.act == "dynamic" else "int8_weight")
    return g.op("MatMul", [x, w])
