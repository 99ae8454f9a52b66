"""Quantization-aware retraining: quantized linears train as fake-quantized fp32 weights.

A `QuantLinear` (integer codes q, scales s, zero points z) becomes a `FakeQuantLinear` whose
trainable fp32 weight starts at the dequantized value w = s (q - z). Its forward rounds the
weight onto the SAME grid (s and z stay fixed, so the model at step 0 computes exactly what the
quantized one did) and, for W8A8 layers, fake-quantizes the activations the way the integer
kernel will (per token / per tensor dynamic, or the calibrated static scale). Rounding passes
gradients straight through (the straight-through estimator of Bengio et al. 2013, as in
Jacob et al. 2018's QAT), except where a value is clipped at the grid's ends.
At the end `to_real` rounds the trained weights onto the grid once more and rebuilds the
QuantLinear with the same format, kernel, smoothing and activation scale: real integer kernels again.
"""
from __future__ import annotations

import torch
from torch import nn

from ..model import Model, get_module, set_module
from ..nn.ggml_linear import GgmlLinear
from ..nn.input_groups import link_input_groups
from ..nn.quant_linear import QuantLinear
from ..nn.spec import group_index
from .qat_ggml import FakeGgmlLinear


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def fake_quant_weight(w: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, spec) -> torch.Tensor:
    """w onto the fixed grid (per row and group), gradient straight through inside the range."""
    g = group_index(w.shape[1], spec)
    s, z = scales[:, g], zeros.float()[:, g]
    q = torch.clamp(_round_ste(w / s) + z, spec.qmin, spec.qmax)
    return (q - z) * s


def fake_quant_act(x: torch.Tensor, act: str, granularity: str, act_scale: torch.Tensor | None,
                   act_zero: torch.Tensor | None = None) -> torch.Tensor:
    """Activations as the int8 kernels see them: a static scale (and zero point when asymmetric),
    or asymmetric dynamic ranges (per token or per tensor), matching kernels.quantize_tokens."""
    if act == "static":
        z = 0.0 if act_zero is None else act_zero
        return (torch.clamp(_round_ste(x / act_scale) + z, -128, 127) - z) * act_scale
    rows = x.reshape(1, -1) if granularity == "tensor" else x.reshape(-1, x.shape[-1])
    with torch.no_grad():
        lo = rows.amin(1, keepdim=True).clamp(max=0)
        hi = rows.amax(1, keepdim=True).clamp(min=0)
        s = (hi - lo) / 255
        s = torch.where(s > 0, s, torch.ones_like(s))
        z = torch.round(-128 - lo / s)
    q = torch.clamp(_round_ste(rows / s) + z, -128, 127)
    return ((q - z) * s).view_as(x)


class FakeQuantLinear(nn.Module):
    """Trainable stand-in of a QuantLinear; `weight` is what masks and optimizers see."""

    def __init__(self, qlin: QuantLinear):
        super().__init__()
        self.desc = qlin.describe()
        self.spec, self.act, self.granularity = qlin.spec, qlin.act, qlin.granularity
        self.in_features, self.out_features = qlin.in_features, qlin.out_features
        self.weight = nn.Parameter(qlin.dequantized().clone())
        self.bias = nn.Parameter(qlin.bias.clone()) if qlin.bias is not None else None
        self.register_buffer("scales", qlin.scales.clone())
        self.register_buffer("zeros", qlin.zeros.clone())
        self.register_buffer("input_scale", None if qlin.input_scale is None else qlin.input_scale.clone())
        self.register_buffer("act_scale", None if qlin.act_scale is None else qlin.act_scale.clone())
        self.register_buffer("act_zero", None if qlin.act_zero is None else qlin.act_zero.clone())
        self.register_buffer("out_scale", None if qlin.out_scale is None else qlin.out_scale.clone())
        self.register_buffer("out_zero", None if qlin.out_zero is None else qlin.out_zero.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale is not None:
            x = x * self.input_scale
        if self.act != "none":
            x = fake_quant_act(x, self.act, self.granularity, self.act_scale, self.act_zero)
        w = fake_quant_weight(self.weight, self.scales, self.zeros, self.spec)
        y = nn.functional.linear(x, w, self.bias)
        return y if self.out_scale is None else fake_quant_act(y, "static", "tensor", self.out_scale, self.out_zero)

    @torch.no_grad()
    def to_quant(self) -> QuantLinear:
        g = group_index(self.in_features, self.spec)
        z = self.zeros.float()[:, g]
        q = torch.clamp(torch.round(self.weight.float() / self.scales[:, g]) + z, self.spec.qmin, self.spec.qmax)
        qlin = QuantLinear.from_codes(
            q.to(torch.int8), self.scales, self.zeros, self.spec,
            None if self.bias is None else self.bias.detach(), self.act, self.desc["kernel"],
            self.input_scale, None if self.act_scale is None else float(self.act_scale), self.granularity,
            None if self.act_zero is None else float(self.act_zero))
        if self.out_scale is not None:
            qlin.quantize_output(float(self.out_scale), None if self.out_zero is None else float(self.out_zero))
        return qlin

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, {self.spec.describe()}, act={self.act} (fake-quantized)"


def quantized_names(model: Model) -> list[str]:
    return [n for n, m in model.module.named_modules() if isinstance(m, (QuantLinear, GgmlLinear))]


def to_fake(model: Model) -> list[str]:
    """Swap every QuantLinear (GgmlLinear) for a FakeQuantLinear (FakeGgmlLinear) in place; returns
    their names."""
    names = quantized_names(model)
    for name in names:
        mod = get_module(model.module, name)
        set_module(model.module, name, FakeGgmlLinear(mod) if isinstance(mod, GgmlLinear) else FakeQuantLinear(mod))
    return names


def to_real(model: Model, names: list[str]) -> None:
    """Round the trained weights onto their grids: QuantLinear on integer kernels again."""
    for name in names:
        set_module(model.module, name, get_module(model.module, name).to_quant())
    link_input_groups(model.module, model.arch.input_groups)
