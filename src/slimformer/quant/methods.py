"""The weight-quantization methods, as pure functions over tensors and calibration statistics.

RTN: every group rounded to its nearest grid point (spec.quantize).
GPTQ (Frantar et al. 2022): columns quantized left to right (or in order of decreasing Hessian
diagonal, `act_order`); each column's rounding error, divided by the diagonal of the upper
Cholesky factor U of H^-1 (H = 2 X^T X / n), is spread over the not-yet-quantized columns through
U's row, and whole blocks of columns are updated lazily in one matrix product. Group scales are
taken from the partially updated weights when a group starts (from the original weights under
act_order, the "static groups" variant, so that stored groups stay contiguous).
AWQ (Lin et al. 2023): per-input-channel scales s = mean|x|^alpha (normalised), alpha searched on
a grid to minimise || X W^T - (X / s) Q(W s)^T ||^2 over the linears that share the input.
SmoothQuant (Xiao et al. 2023): s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha), moving activation
outliers into the weights before both are quantized to int8.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine.hessian import HessianInfo, inverse_cholesky
from ..nn.spec import QuantSpec, fake_quantize, params_for, quantize, quantize_with


@dataclass
class GPTQResult:
    q: torch.Tensor  # int8 codes [out, in]
    scales: torch.Tensor  # [out, groups]
    zeros: torch.Tensor  # int8 [out, groups]
    info: HessianInfo


def rtn(W: torch.Tensor, spec: QuantSpec):
    return quantize(W, spec)


@torch.no_grad()
def gptq(W: torch.Tensor, H: torch.Tensor, spec: QuantSpec | None, blocksize: int = 128, damp: float = 0.01,
         act_order: bool = False, keep: torch.Tensor | None = None, overwrite_h: bool = False,
         grid=None) -> GPTQResult:
    """GPTQ on one linear. `keep` (a pruning mask) keeps pruned weights exactly zero.
    overwrite_h: H is a float64 temporary the caller hands over (inverted in place, no copies).
    grid: a fixed nn.ggml_grid.GgmlGrid (its scales and mins chosen beforehand) instead of `spec`'s
    groups; the result's q then holds the grid's codes and scales / zeros are None."""
    W = W.detach().clone().float()
    rows, cols = W.shape
    if grid is not None:  # every group's parameters are fixed: GPTQ only chooses the codes
        spec, width = QuantSpec(8, grid.type.sub), grid.type.sub
    width = spec.width(cols)
    n_groups = spec.groups(cols)
    diag = torch.diag(H).clone()
    perm = torch.argsort(diag, descending=True) if act_order else torch.arange(cols)
    # Dead channels are handled (and their weights zeroed) in the original order, then permuted.
    Hp = H[perm][:, perm] if act_order else H
    U, info = inverse_cholesky(Hp, W[:, perm], damp, overwrite=overwrite_h or act_order)
    del Hp, H
    W[:, diag == 0] = 0
    dev = W.device  # GPTQ runs where the weights are (a GPU, when the model is on one)
    scales = torch.ones(rows, n_groups, device=dev)
    zeros = torch.zeros(rows, n_groups, device=dev)
    gs, gb = (grid.s.to(dev), grid.b.to(dev)) if grid is not None else (None, None)
    if grid is None and (act_order or not spec.group_size):  # static groups: parameters from the original weights
        for g, c0 in enumerate(range(0, cols, width)):
            scales[:, g], zeros[:, g] = params_for(W[:, c0:c0 + width], spec)
    # The column loop works on transposed copies ([columns, rows], so one column is one contiguous
    # row): the rank-1 update then writes contiguous memory instead of a stride-`cols` gather, 2x
    # faster on a 5632 x 2048 linear; every element sees the same arithmetic.
    Wp = W[:, perm] if act_order else W  # updated in place either way; W itself is not read after
    keep_t = (keep[:, perm] if act_order else keep).t() if keep is not None else None
    Qt = torch.zeros(cols, rows, device=dev)
    dynamic_groups = grid is None and spec.group_size and not act_order
    if dynamic_groups:  # groups never straddle a column block
        blocksize = width * max(1, blocksize // width)
    for b0 in range(0, cols, blocksize):
        b1 = min(b0 + blocksize, cols)
        W1 = Wp[:, b0:b1].t().contiguous()  # [block columns, rows]
        U1 = U[b0:b1, b0:b1]
        err1 = torch.zeros_like(W1)
        for i in range(b1 - b0):
            c = int(perm[b0 + i])
            g = c // width
            if dynamic_groups and c % width == 0:
                scales[:, g], zeros[:, g] = params_for(W1[i:i + width].t(), spec)
            w = W1[i]
            if grid is not None:
                s, b = gs[:, g], gb[:, g]
                deq = grid.value(grid.codes(w, s, b), s, b)
            else:
                s, z = scales[:, g], zeros[:, g]
                deq = (quantize_with(w[:, None], s, z, spec)[:, 0] - z) * s
            if keep_t is not None:
                deq = deq * keep_t[b0 + i]
            e = (w - deq) / U1[i, i]
            W1[i:].addr_(U1[i, i:], e, alpha=-1)  # rank-1 OBS update, in place
            Qt[b0 + i] = deq
            err1[i] = e
        Wp[:, b1:] -= err1.t() @ U[b0:b1, b1:]
    del Wp, W
    deq = Qt.t()
    if act_order:
        deq = torch.empty_like(deq).index_copy_(1, perm, deq)  # back to the original column order
    if grid is not None:
        return GPTQResult(grid.quantize(deq.cpu()).to(torch.int16), None, None, info)
    g_of = torch.arange(cols) // width
    q = torch.round(deq / scales[:, g_of] + zeros[:, g_of]).clamp(spec.qmin, spec.qmax)
    return GPTQResult(q.to(torch.int8), scales, zeros.to(torch.int8), info)


def awq_loss(Ws: list[torch.Tensor], G: torch.Tensor, s: torch.Tensor, spec: QuantSpec) -> float:
    """Output error sum ||X W'^T - X W^T||^2 of the linears `Ws` sharing the input X, quantized
    after scaling by s: the scaled layer computes (X / s) fq(W s)^T = X W'^T with W' = fq(W s) / s.
    With E = W' - W the error is sum_rows e G e^T, G = X^T X (float64): out x in^2 operations per
    alpha instead of tokens x in x out, the same objective."""
    total = 0.0
    for W in Ws:
        E = (fake_quantize(W * s[None, :], spec) / s[None, :] - W).double()
        total += float(((E @ G) * E).sum())
    return total


@torch.no_grad()
def awq_scales(Ws: list[torch.Tensor], X: torch.Tensor, spec: QuantSpec, grid: int = 20
               ) -> tuple[torch.Tensor, float, list[float]]:
    """(scales [in], chosen alpha, loss per alpha) for linears sharing the input X [n, in]."""
    Ws = [W.float() for W in Ws]
    X = X.float()
    x_mean = X.abs().mean(0)
    Xd = X.double()
    G = Xd.T @ Xd
    losses, best = [], (float("inf"), None, 0.0)
    for k in range(grid):
        alpha = k / grid
        s = x_mean.pow(alpha).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        loss = awq_loss(Ws, G, s, spec)
        losses.append(loss)
        if loss < best[0]:
            best = (loss, s, alpha)
    return best[1], best[2], losses


def smoothquant_scales(act_absmax: torch.Tensor, Ws: list[torch.Tensor], alpha: float = 0.5) -> torch.Tensor:
    """Per-input-channel s: X / s and W * s are then equally easy to quantize (alpha = 0.5)."""
    w_absmax = torch.stack([W.abs().amax(0).float() for W in Ws]).amax(0)
    s = act_absmax.float().clamp(min=1e-5).pow(alpha) / w_absmax.clamp(min=1e-5).pow(1 - alpha)
    return s.clamp(min=1e-5)
