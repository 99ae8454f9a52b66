"""The stored fp16 numbers of a GGML grid refitted to GPTQ's codes, on the layer's output error.

GPTQ on a fixed grid chooses the codes u with every scale (and min) fixed beforehand. Given u, each
row's dequantized weights are linear in its fp16 numbers theta (legacy types: d, and m, per 32
columns; K-quants: d, and dmin, per 256 columns, the integer sub-block scales and mins fixed):

    w_hat = sum_k theta_k a_k,  a_d = sc (u - z) on the group's columns, a_m = 1 (legacy) or
    -m_int (K-quants) on them,

so the theta minimising the layer's output error over the calibration inputs,
(w - A theta)^T H (w - A theta) with H = X^T X, is the solution of (A^T H A) theta = A^T H w, one
small system per row (2 x 18 unknowns for a 576-column q4_1 row). This is the full Hessian, not
only its diagonal (llama.cpp's importance matrix weights each column alone). The refit theta are
rounded to fp16 and kept per row only where they lower that error.
"""
from __future__ import annotations

import torch

from ..nn.ggml_grid import GgmlGrid, grid_from_stored


def _bases(grid: GgmlGrid, u: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """The stored keys refitted (one number per type.block columns) and their per-column basis
    values [rows, keys, cols]."""
    t, st = grid.type, grid.stored
    rows, cols = u.shape
    sub = torch.arange(cols) // t.sub
    q = u.float() - t.zero
    if not t.super_scales:
        if t.affine:
            return ["d", "m"], torch.stack([q, torch.ones_like(q)], 1)
        return ["d"], q[:, None]
    sc = st["sc"].float()[:, sub]
    if t.affine:
        return ["d", "dmin"], torch.stack([sc * q, -st["m"].float()[:, sub]], 1)
    return ["d"], (sc * q)[:, None]


def output_error(W: torch.Tensor, What: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """Per row, (w - w_hat)^T H (w - w_hat)."""
    E = (W - What).double()
    return ((E @ H.double()) * E).sum(1)


@torch.no_grad()
def refit_grid(W: torch.Tensor, H: torch.Tensor, u: torch.Tensor, grid: GgmlGrid) -> GgmlGrid:
    """The grid whose fp16 numbers are the least-squares fit of W [rows, in] given the codes u, on
    H [in, in] (X^T X up to a factor); rows where the fitted numbers do not lower the error keep
    the old ones."""
    keys, A = _bases(grid, u)
    gs = grid.type.block
    rows, K, cols = A.shape
    G = cols // gs
    Hb = H.double().reshape(G, gs, G, gs)
    Ag = A.double().reshape(rows, K, G, gs)
    Wg = W.double().reshape(rows, G, gs)
    M = torch.empty(rows, K * G, K * G, dtype=torch.float64)
    v = torch.empty(rows, K * G, dtype=torch.float64)
    chunk = max(1, 2 ** 24 // (K * G * cols))  # rows per pass: the [r, K, G, cols] product <= 128 MiB
    for r0 in range(0, rows, chunk):
        a = Ag[r0:r0 + chunk]
        # (a_kg^T H) on every column (h, j): one group's basis against H's tiles of that group
        aH = torch.einsum("rkgi,gihj->rkghj", a, Hb)
        M[r0:r0 + chunk] = torch.einsum("rkghj,rlhj->rkglh", aH, a).reshape(-1, K * G, K * G)
        v[r0:r0 + chunk] = torch.einsum("rkghj,rhj->rkg", aH, Wg[r0:r0 + chunk]).reshape(-1, K * G)
        del aH
    theta0 = torch.cat([grid.stored[k].double().reshape(rows, G) for k in keys], 1)
    # a ridge towards the old numbers keeps empty groups (all codes on zero) where they were
    lam = 1e-9 * M.diagonal(dim1=1, dim2=2).mean(1).clamp(min=1e-30)
    eye = torch.eye(K * G, dtype=torch.float64)
    theta = torch.linalg.solve(M + lam[:, None, None] * eye, v + lam[:, None] * theta0)
    theta = theta.clamp(-65504, 65504).to(torch.float16)
    new = dict(grid.stored)
    for i, k in enumerate(keys):
        new[k] = theta[:, i * G:(i + 1) * G].contiguous()
    fitted = grid_from_stored(grid.type, new)
    better = output_error(W, fitted.dequantize(u), H) < output_error(W, grid.dequantize(u), H)
    for k in keys:
        new[k] = torch.where(better[:, None], new[k], grid.stored[k])
    return grid_from_stored(grid.type, new)


def refit_rounds(W: torch.Tensor, H: torch.Tensor, u: torch.Tensor, grid: GgmlGrid, rounds: int,
                 codes_for) -> tuple[GgmlGrid, torch.Tensor]:
    """`rounds` times: refit the grid to the codes, then (but after the last) choose the codes
    again on it with codes_for(grid) (GPTQ). Returns the (grid, codes) of least total error."""
    best = (grid, u, float(output_error(W, grid.dequantize(u), H).sum()))
    for r in range(rounds):
        grid = refit_grid(W, H, u, grid)
        err = float(output_error(W, grid.dequantize(u), H).sum())
        if err < best[2]:
            best = (grid, u, err)
        if r + 1 < rounds:
            u = codes_for(grid)
            err = float(output_error(W, grid.dequantize(u), H).sum())
            if err < best[2]:
                best = (grid, u, err)
    return best[0], best[1]
