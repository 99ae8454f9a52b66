"""The grid of one weight tensor in a GGML type: every sub-block's scale and min, chosen from the
weights (and the inputs' importance), then fixed, so that GPTQ (or rounding) picks the codes.

Choosing the parameters (per sub-block x of `sub` columns, importance weights h >= 0: the mean
squared input of each column from calibration, llama.cpp's "importance matrix"; x^2 without data):
- symmetric types (q8_0, q4_0, q5_0, q6_k's 16-column sub-blocks): the scale minimising
  sum h (x - s (u - z))^2 over candidates s = m / (c + k / 10), k = -9..9, where m is the signed
  largest-magnitude weight and c = -z (m on the lowest code, llama.cpp's full-range rule) or
  c = umax - z (m on the highest), and the weighted least-squares scale of each candidate's codes;
- affine types (q4_1, q5_1, q4_k, q5_k): the weighted least-squares fit x ~ s u + b, b <= 0, of the
  codes that inverse scales (umax + k / 10 - 1) / (max - min), k = 0..20, give (the search of
  llama.cpp's K-quant reference, written from its description), the best of these;
- K-quants then store the sub-block scales (and mins) as 6-bit integers against one fp16 scale
  per 256 columns (q6_k: 8-bit signed against an fp16 d); legacy types store them as fp16.
The effective (s, b) are then what the dequantizer computes from the stored numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .ggml_types import GgmlType


@dataclass
class GgmlGrid:
    type: GgmlType
    s: torch.Tensor  # [rows, in / sub] float32: the scale each code is multiplied with
    b: torch.Tensor  # [rows, in / sub] float32: the min (affine types; zeros otherwise)
    stored: dict  # the numbers the blocks hold (ggml_blocks.pack reads them)

    @property
    def z(self) -> int:
        return self.type.zero

    def columns(self, c0: int, c1: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(s, b) of columns c0..c1-1: [rows, c1 - c0]."""
        g = torch.arange(c0, c1) // self.type.sub
        return self.s[:, g], self.b[:, g]

    def codes(self, w: torch.Tensor, s: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Round-to-nearest codes of w on the grid points (s, b) (same shapes; float32 result).
        A zero scale (an all-zero sub-block) takes the code of value b."""
        safe = torch.where(s == 0, torch.ones_like(s), s)
        u = torch.round((w - b) / safe) + self.z
        u = torch.where(s == 0, torch.full_like(u, self.z), u)
        return u.clamp_(self.type.umin, self.type.umax)

    def value(self, u: torch.Tensor, s: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """w = s (u - z) + b, in the order the dequantizers compute it."""
        if self.type.affine:
            return s * u + b
        return s * (u - self.z)

    def quantize(self, W: torch.Tensor) -> torch.Tensor:
        """Round-to-nearest codes of the whole tensor [rows, in]."""
        s, b = self.columns(0, W.shape[1])
        return self.codes(W.float(), s, b)

    def dequantize(self, u: torch.Tensor) -> torch.Tensor:
        s, b = self.columns(0, u.shape[1])
        return self.value(u.float(), s, b)


def _fp16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).to(torch.float32)


def _weighted_error(x, w, s, b, t: GgmlType) -> torch.Tensor:
    safe = torch.where(s == 0, torch.ones_like(s), s)
    u = (torch.round((x - b) / safe) + t.zero).clamp_(t.umin, t.umax)
    back = s * (u - t.zero) + b
    return (w * (x - back) ** 2).sum(-1)


def symmetric_scales(x: torch.Tensor, w: torch.Tensor, t: GgmlType, fp16: bool) -> torch.Tensor:
    """The signed scale per sub-block (rows of x [n, sub]) with the least weighted error."""
    m = x.gather(1, x.abs().argmax(1, keepdim=True))[:, 0]
    zero_b = torch.zeros_like(m)
    best, best_err = None, None
    for c in (t.umin - t.zero, t.umax - t.zero):
        for k in range(-9, 10):
            denom = c + k / 10
            if denom == 0 or (c > 0) != (denom > 0):
                continue
            s = m / denom
            # each candidate's codes, and then the weighted least-squares scale of those codes
            # (sum h x q / sum h q^2, llama.cpp's make_qx_quants refit), compete
            safe = torch.where(s == 0, torch.ones_like(s), s)
            q = (torch.round(x / safe[:, None]) + t.zero).clamp_(t.umin, t.umax) - t.zero
            q2 = (w * q * q).sum(1)
            refit = torch.where(q2 > 0, (w * x * q).sum(1) / q2.clamp(min=1e-30), s)
            for cand in (s, refit):
                cand = _fp16(cand) if fp16 else cand
                err = _weighted_error(x, w, cand[:, None], zero_b[:, None], t)
                if best is None:
                    best, best_err = cand, err
                else:
                    better = err < best_err
                    best, best_err = torch.where(better, cand, best), torch.where(better, err, best_err)
    return best


def affine_fit(x: torch.Tensor, w: torch.Tensor, t: GgmlType, fp16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(s >= 0, b <= 0) per sub-block with the least weighted error, over the candidate codes."""
    lo = x.amin(1).clamp(max=0)
    hi = x.amax(1)
    span = (hi - lo).clamp(min=1e-30)
    s0 = (hi - lo) / t.umax
    candidates = [(s0, lo)]
    sw = w.sum(1)
    for k in range(21):
        iscale = (t.umax - 1 + k / 10) / span
        u = torch.round(iscale[:, None] * (x - lo[:, None])).clamp_(0, t.umax)
        sl, sl2 = (w * u).sum(1), (w * u * u).sum(1)
        sx, sxl = (w * x).sum(1), (w * x * u).sum(1)
        det = sw * sl2 - sl * sl
        ok = det > 0
        det = torch.where(ok, det, torch.ones_like(det))
        s = torch.where(ok, (sw * sxl - sx * sl) / det, s0)
        b = torch.where(ok, (sl2 * sx - sl * sxl) / det, lo)
        pos = b > 0  # the min must not be above zero (b <= 0 is what the blocks store)
        s = torch.where(pos, sxl / sl2.clamp(min=1e-30), s)
        b = torch.where(pos, torch.zeros_like(b), b)
        candidates.append((s.clamp(min=0), b))
    best_s, best_b, best_err = None, None, None
    for s, b in candidates:
        if fp16:
            s, b = _fp16(s), _fp16(b)
        err = _weighted_error(x, w, s[:, None], b[:, None], t)
        if best_s is None:
            best_s, best_b, best_err = s, b, err
        else:
            better = err < best_err
            best_s, best_b = torch.where(better, s, best_s), torch.where(better, b, best_b)
            best_err = torch.where(better, err, best_err)
    return best_s, best_b


def choose_grid(W: torch.Tensor, t: GgmlType, importance: torch.Tensor | None = None) -> GgmlGrid:
    """The grid of W [rows, in] in type t; importance [in] (mean squared input per column)."""
    W = W.detach().float()
    rows, cols = W.shape
    if not t.fits(cols):
        raise ValueError(f"{t.name} needs widths that are multiples of {t.block} (got {cols})")
    nsub = cols // t.sub
    x = W.reshape(rows * nsub, t.sub)
    if importance is not None:
        h = importance.float().clamp(min=0)
        h = h / h.mean().clamp(min=1e-30)
        w = (h + 1e-8).expand(rows, cols).reshape(rows * nsub, t.sub)
    else:
        w = x * x + 1e-12
    legacy = not t.super_scales
    if t.affine:
        s, b = affine_fit(x, w, t, fp16=legacy)
    else:
        s, b = symmetric_scales(x, w, t, fp16=legacy), None
    s = s.reshape(rows, nsub)
    b = b.reshape(rows, nsub) if b is not None else None
    if legacy:
        stored = {"d": s.to(torch.float16)}
        if t.affine:
            stored["m"] = b.to(torch.float16)
    else:
        stored = _super_block_scales(t, s, b)
    return grid_from_stored(t, stored)


def grid_from_stored(t: GgmlType, stored: dict) -> GgmlGrid:
    """The effective (s, b) of the stored numbers, computed as the dequantizers compute them."""
    d = stored["d"].float()
    if not t.super_scales:
        s = d
        b = stored["m"].float() if t.affine else torch.zeros_like(s)
        return GgmlGrid(t, s, b, stored)
    rows, nblocks = d.shape
    s = (d[..., None] * stored["sc"].float().reshape(rows, nblocks, -1)).reshape(rows, -1)
    if t.affine:
        dm = stored["dmin"].float()[..., None] * stored["m"].float().reshape(rows, nblocks, -1)
        b = -dm.reshape(rows, -1)
    else:
        b = torch.zeros_like(s)
    return GgmlGrid(t, s, b, stored)


def _super_block_scales(t: GgmlType, s: torch.Tensor, b: torch.Tensor | None) -> dict:
    """K-quants: sub-block scales (and mins) as integers against one fp16 scale per 256 columns:
    q4_k / q5_k 6-bit scales and mins, q2_k 4-bit (s = d sc, b = -dmin m); q6_k 8-bit and q3_k
    6-bit signed scales (s = d sc)."""
    rows, nsub = s.shape
    per = t.block // t.sub
    s3 = s.reshape(rows, nsub // per, per)
    top = t.scale_max
    if t.affine:
        d = _fp16(s3.amax(2) / top)
        mins = (-b).clamp(min=0).reshape(rows, nsub // per, per)
        dmin = _fp16(mins.amax(2) / top)
        return {"d": d.to(torch.float16), "dmin": dmin.to(torch.float16),
                "sc": _int_ratio(s3, d, 0, top).reshape(rows, nsub).to(torch.uint8),
                "m": _int_ratio(mins, dmin, 0, top).reshape(rows, nsub).to(torch.uint8)}
    d = _fp16(s3.abs().amax(2) / top)
    return {"d": d.to(torch.float16), "sc": _int_ratio(s3, d, -top - 1, top).reshape(rows, nsub).to(torch.int8)}


def _int_ratio(v: torch.Tensor, d: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    safe = torch.where(d == 0, torch.ones_like(d), d)
    q = torch.round(v / safe[..., None]).clamp_(lo, hi)
    return torch.where((d == 0)[..., None], torch.zeros_like(q), q)
