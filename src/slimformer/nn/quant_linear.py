"""QuantLinear: a linear layer stored as integer codes that runs on an integer kernel.

Stored (state_dict, what is saved): `qweight` (int8 [out, in], or for <= 4 bits two codes per
byte, uint8 [out, ceil(in / 2)]), `scales` fp32 [out, groups], `zeros` int8 [out, groups],
optional `bias`, optional `input_scale` [in] (a smoothing factor x -> x * input_scale that could
not be folded into a preceding layer), optional `act_scale` (static activation range) and, for an
asymmetric static range, `act_zero` (its zero point on the int8 grid: q = clamp(round(x / s) + z,
-128, 127), x ~ (q - z) s; symmetric ranges have none, z = 0). A layer whose output feeds an
integer product elsewhere (a query or key projection, for int8 attention scores) also holds
`out_scale` [and `out_zero`]: its output leaves on that static int8 grid, fake-quantized here and
written as a Q/DQ pair by the exports, which the runtime's attention fuses into int8 kernels.
Kernel-specific packed forms are rebuilt from those on first use, so a saved and reloaded layer
computes bit-identical outputs.

Kernels (kernels.py): "int8_dynamic" (int8 weights, 8-bit dynamic activations, one scale per
token, or per tensor with `granularity="tensor"`: fbgemm's fused kernel where it is exact, the same
arithmetic on torch._int_mm on CPUs without VNNI; see kernels.fbgemm_exact),
"int8_static" (calibrated per-tensor activation scale, and zero point when asymmetric), "int4_weight" (int4 weights, bf16
activations), "int8_weight" (int8 weights, bf16 activations) and "simulated": the weight is
dequantized to fp32 and activations fake-quantized, for research only; reports name it as such
and never quote its speed.
"""
from __future__ import annotations

import torch
from torch import nn

from . import kernels
from .registry import register_module
from .spec import QuantSpec, dequantize, pack_int4, unpack_int4

ACTIVATIONS = ("none", "dynamic", "static")
OUTPUTS = ("none", "symmetric", "asymmetric")  # the output's static int8 grid (see the docstring)
KERNELS = ("int8_dynamic", "int8_static", "int8_weight", "int4_weight", "simulated")


def real_kernel(spec: QuantSpec, act: str, in_features: int) -> str | None:
    """The integer kernel that can run this format exactly, or None (then only simulated)."""
    if act != "none":
        if spec.int8_rows:
            return "int8_dynamic" if act == "dynamic" else "int8_static"
        return None
    if spec.bits == 4 and kernels.kernel_group(in_features, spec.group_size) is not None:
        return "int4_weight"
    if spec.int8_rows:
        return "int8_weight"
    return None


@register_module("quant_linear")
class QuantLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, spec: QuantSpec, bias: bool = False,
                 act: str = "none", kernel: str = "simulated", input_scale: bool = False,
                 granularity: str = "token", act_symmetric: bool = True, out: str = "none"):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.spec, self.act, self.kernel = spec, act, kernel
        self.granularity = granularity  # dynamic activations: one scale per "token" or per "tensor"
        packed = spec.bits <= 4
        shape = (out_features, -(-in_features // 2)) if packed else (out_features, in_features)
        groups = spec.groups(in_features)
        self.register_buffer("qweight", torch.zeros(shape, dtype=torch.uint8 if packed else torch.int8))
        self.register_buffer("scales", torch.ones(out_features, groups))
        self.register_buffer("zeros", torch.zeros(out_features, groups, dtype=torch.int8))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.register_buffer("input_scale", torch.ones(in_features) if input_scale else None)
        self.register_buffer("act_scale", torch.ones(()) if act == "static" else None)
        self.register_buffer("act_zero", torch.zeros(()) if act == "static" and not act_symmetric else None)
        if out not in OUTPUTS:
            raise ValueError(f"out must be one of {OUTPUTS}, got {out!r}")
        self.register_buffer("out_scale", torch.ones(()) if out != "none" else None)
        self.register_buffer("out_zero", torch.zeros(()) if out == "asymmetric" else None)
        self._cache: dict = {}
        self._group, self._index = None, 0  # input_groups.InputGroup: a runtime link, never saved

    def link(self, group, index: int) -> None:
        self._group, self._index = group, index

    def unlink(self) -> None:
        self._group, self._index = None, 0

    @classmethod
    def from_codes(cls, q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, spec: QuantSpec,
                   bias: torch.Tensor | None = None, act: str = "none", kernel: str = "simulated",
                   input_scale: torch.Tensor | None = None, act_scale: float | None = None,
                   granularity: str = "token", act_zero: float | None = None) -> "QuantLinear":
        """act_zero: the static range's zero point (an integer in [-128, 127]); None: symmetric."""
        out_f, in_f = q.shape
        m = cls(in_f, out_f, spec, bias is not None, act, kernel, input_scale is not None, granularity,
                act_symmetric=act_zero is None)
        m.qweight.copy_(pack_int4(q) if spec.bits <= 4 else q.to(torch.int8))
        m.scales.copy_(scales.float())
        m.zeros.copy_(zeros.to(torch.int8))
        if bias is not None:
            m.bias.copy_(bias.detach().float())
        if input_scale is not None:
            m.input_scale.copy_(input_scale.float())
        if act_scale is not None:
            m.act_scale.fill_(float(act_scale))
        if m.act_zero is not None:
            m.act_zero.fill_(float(act_zero))
        return m.to(q.device)  # where the codes were computed (the engine's device)

    def describe(self) -> dict:
        return {"bits": self.spec.bits, "group_size": self.spec.group_size, "symmetric": self.spec.symmetric,
                "full_range": self.spec.full_range,
                "act": self.act, "kernel": self.kernel, "in": self.in_features, "out": self.out_features,
                "bias": self.bias is not None, "input_scale": self.input_scale is not None,
                "granularity": self.granularity, "act_symmetric": self.act_zero is None, "out_grid": self.out}

    @classmethod
    def from_description(cls, desc: dict) -> "QuantLinear":
        spec = QuantSpec(desc["bits"], desc["group_size"], desc["symmetric"], desc.get("full_range", False))
        return cls(desc["in"], desc["out"], spec, desc["bias"], desc["act"], desc["kernel"], desc["input_scale"],
                   desc.get("granularity", "token"), desc.get("act_symmetric", True), desc.get("out_grid", "none"))

    @property
    def out(self) -> str:
        return "none" if self.out_scale is None else "symmetric" if self.out_zero is None else "asymmetric"

    def quantize_output(self, scale: float, zero: float | None) -> "QuantLinear":
        """Put this layer's output on a static int8 grid (zero None: symmetric); in place."""
        self.register_buffer("out_scale", torch.tensor(float(scale), device=self.qweight.device))
        self.register_buffer("out_zero", None if zero is None else torch.tensor(float(zero), device=self.qweight.device))
        return self

    def to_onnx(self, g, x: str, name: str, lower) -> str:
        from .quant_linear_onnx import quant_linear_to_onnx
        return quant_linear_to_onnx(g, x, self, name)

    def codes(self) -> torch.Tensor:
        if self.spec.bits <= 4:
            return unpack_int4(self.qweight, self.in_features)
        return self.qweight

    def dequantized(self) -> torch.Tensor:
        """The fp32 weight these codes stand for (input smoothing not undone)."""
        return dequantize(self.codes(), self.scales, self.zeros, self.spec)

    def __getstate__(self):  # packed kernel objects are rebuilt, never copied or pickled
        state = self.__dict__.copy()
        state["_cache"] = {}
        return state

    def _apply(self, fn, recurse=True):
        self._cache = {}
        if self._group is not None:
            self._group.reset()
        return super()._apply(fn, recurse)

    def _prepared(self):
        """The forward function for this layer's kernel, x [..., in] fp32 -> [..., out] fp32, built
        once: decoding calls each layer hundreds of times per token, so no per-call dispatch."""
        fn = self._cache.get("fn")
        if fn is not None:
            return fn
        q, bias, smooth = self.codes(), self.bias, self.input_scale
        if self.kernel == "int8_dynamic":
            w_scale = self.scales[:, 0].contiguous()
            w_t, colsum = q.t(), q.sum(1, dtype=torch.int32).float()
            per_tensor = self.granularity == "tensor"
            # else the same arithmetic on torch._int_mm; 7-bit codes cannot overflow fbgemm's int16
            # pair sums (2 x 255 x 64 < 2^15), so they take it on every CPU
            fbgemm = kernels.fbgemm_exact() or (self.spec.bits == 7 and kernels.fbgemm_available())
            packed = kernels.fbgemm_pack(q, w_scale, bias) if fbgemm else None  # bias fused in

            def fn(x):  # any leading dims: fbgemm flattens them itself
                if smooth is not None:
                    x = x * smooth
                if fbgemm and (per_tensor or x.numel() == x.shape[-1]):  # fused (one token: per token)
                    return kernels.fbgemm_dynamic(x, packed)
                if per_tensor:
                    y = kernels.int8_per_tensor(x, w_t, colsum, w_scale)
                    return y if bias is None else y.add_(bias)
                y = kernels.int8_per_token(x.reshape(-1, x.shape[-1]), w_t, colsum, w_scale)
                y = y if bias is None else y.add_(bias)
                return y.view(*x.shape[:-1], y.shape[-1])
        elif self.kernel == "int8_static":
            w_t = q.t()
            inv = (smooth / self.act_scale) if smooth is not None else 1.0 / self.act_scale
            out_scale = self.scales[:, 0] * self.act_scale
            zero = None if self.act_zero is None else int(self.act_zero)
            # an asymmetric range: sum_k (q_k - z) w_k = q.w - z colsum(w), exact in int32
            z_colsum = None if not zero else (zero * q.sum(1, dtype=torch.int32)).float()

            def fn(x2):
                y = kernels.int8_static(x2, inv, w_t, out_scale, zero, z_colsum)
                return y if bias is None else y.add_(bias)
        elif self.kernel in ("int4_weight", "int8_weight"):
            if self.kernel == "int4_weight":
                packed, sz, gk = kernels.int4_pack(q, self.scales, self.zeros, self.spec.group_size)
                mm = lambda x2: kernels.int4_mm(x2, packed, sz, gk)  # noqa: E731
            else:
                qc, scale = q.contiguous(), self.scales[:, 0].to(torch.bfloat16)
                mm = lambda x2: kernels.int8_weight_mm(x2, qc, scale)  # noqa: E731

            def fn(x2):
                y = mm(x2 * smooth if smooth is not None else x2)
                return y if bias is None else y.add_(bias)
        else:
            weight = self.dequantized()

            def fn(x2):
                y = self._simulated(x2 * smooth if smooth is not None else x2, weight)
                return y if bias is None else y.add_(bias)
        if self.kernel != "int8_dynamic":
            fn = _any_shape(fn, self.in_features, self.out_features)
        self._cache["fn"] = fn
        return fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype is not torch.float32:  # the kernels take fp32 (int4 / int8 weight-only cast to bf16)
            return self.forward(x.float()).to(x.dtype)
        if self._group is not None:  # q/k/v or gate/up: one kernel call for the group (input_groups.py)
            y = self._group.output(self._index, x)
        else:
            y = self._prepared()(x)
        if self.out_scale is None:
            return y
        z = 0.0 if self.out_zero is None else float(self.out_zero)
        return (torch.round(y / self.out_scale).add_(z).clamp_(-128, 127) - z) * self.out_scale

    def _simulated(self, x2: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.act == "dynamic":
            rows = x2.reshape(1, -1) if self.granularity == "tensor" else x2
            q, s, z = kernels.quantize_tokens(rows)
            x2 = ((q.float() - z) * s).view_as(x2)
        elif self.act == "static":
            z = 0.0 if self.act_zero is None else float(self.act_zero)
            x2 = (torch.round(x2 / self.act_scale).add(z).clamp(-128, 127) - z) * self.act_scale
        return x2 @ weight.T

    def extra_repr(self) -> str:
        out = "" if self.out_scale is None else f", out={self.out} int8"
        return f"{self.in_features}, {self.out_features}, {self.spec.describe()}, act={self.act}, kernel={self.kernel}{out}"


def _any_shape(fn2d, in_features: int, out_features: int):
    """Lift a [M, in] -> [M, out] function to inputs with any leading dimensions."""
    def fn(x):
        return fn2d(x.reshape(-1, in_features)).view(*x.shape[:-1], out_features)
    return fn
