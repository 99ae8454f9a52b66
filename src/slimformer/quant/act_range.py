"""Static activation ranges: the per-tensor scale (and zero point) an int8_static layer quantizes
its input with, chosen once from calibration statistics.

Grids (the kernels' own, nn/kernels.int8_static): symmetric q = clamp(round(x / s), -128, 127)
with s = max|x| / 127; asymmetric q = clamp(round(x / s) + z, -128, 127) with
s = (hi - lo) / 255 over a range [lo, hi] that holds 0 (so zero padding and ReLU / GELU zeros
are exact) and z = round(-128 - lo / s). An asymmetric range spends all 256 levels on a one-sided
input such as GELU's output (>= -0.17), where a symmetric one wastes almost half of them.

Which range: "minmax" covers every calibration value; "mse" shrinks it, searching the clipping
ratio that minimises the mean squared quantization error of sampled calibration inputs (the
MSE range estimator of TensorRT's and NNCF's calibrators): one outlier token no longer sets the
step for all the others.
"""
from __future__ import annotations

import torch

RANGES = ("minmax", "mse")
RATIOS = torch.linspace(0.2, 1.0, 33)  # clipping ratios the "mse" search tries (1.0: minmax)


def grid(lo: float, hi: float, symmetric: bool) -> tuple[float, float]:
    """(scale, zero point) of the int8 grid covering [lo, hi] (zero point 0 when symmetric)."""
    if symmetric:
        return (max(abs(lo), abs(hi)) / 127) or 1.0, 0.0
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    s = (hi - lo) / 255 or 1.0
    return s, float(min(max(round(-128 - lo / s), -128), 127))


def fake_quant(x: torch.Tensor, scale: float, zero: float) -> torch.Tensor:
    return (torch.round(x / scale).add_(zero).clamp_(-128, 127) - zero) * scale


def choose(lo: float, hi: float, symmetric: bool, method: str = "minmax",
           samples: torch.Tensor | None = None) -> tuple[float, float]:
    """The (scale, zero point) for an input whose calibration values span [lo, hi]."""
    if method == "minmax" or samples is None or samples.numel() == 0:
        return grid(lo, hi, symmetric)
    x = samples.float()
    best, best_err = None, float("inf")
    for r in RATIOS.tolist():
        s, z = grid(lo * r, hi * r, symmetric)
        err = float((fake_quant(x, s, z) - x).pow_(2).mean())
        if err < best_err:  # ties keep the smaller ratio's grid (finer steps)
            best, best_err = (s, z), err
    return best
