"""The three pruning methods, as pure functions over tensors and calibration statistics.

magnitude: score |W_ij|, lowest removed over the whole matrix (or per group of M for N:M).
Wanda (Sun et al. 2023): score |W_ij| * ||X_j||_2, compared within each output row.
SparseGPT (Frantar & Alistarh 2023): OBS with the layer Hessian H = 2 X^T X / n. Columns are
processed left to right in blocks; inside a block the mask is chosen adaptively by the OBS error
w^2 / [H^-1]_cc^2, each pruned weight's error is spread over the columns to its right through
the Cholesky factor of H^-1, and the block's accumulated errors update the remaining columns
in one matrix product (lazy batch update).
"""
from __future__ import annotations

import torch

from ..engine.hessian import HessianInfo, inverse_cholesky
from .masks import layer_mask, nm_mask, row_mask


def magnitude_mask(W: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None) -> torch.Tensor:
    score = W.abs().float()
    return nm_mask(score, *nm) if nm else layer_mask(score, sparsity)


def wanda_score(W: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    return W.abs().float() * norms.float()[None, :]


def wanda_mask(W: torch.Tensor, norms: torch.Tensor, sparsity: float,
               nm: tuple[int, int] | None = None) -> torch.Tensor:
    score = wanda_score(W, norms)
    return nm_mask(score, *nm) if nm else row_mask(score, sparsity)


@torch.no_grad()
def sparsegpt(W: torch.Tensor, H: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None,
              blocksize: int = 128, damp: float = 0.01,
              overwrite_h: bool = False) -> tuple[torch.Tensor, torch.Tensor, HessianInfo]:
    """Returns (pruned and updated W, keep mask, Hessian info); W is not modified, nor is H
    unless overwrite_h (then a float64 H is damped in place and overwritten by its inverse)."""
    W = W.detach().clone().float()
    U, info = inverse_cholesky(H, W, damp, overwrite=overwrite_h)
    keep = sparsegpt_solve(W, U, sparsity, nm, blocksize)
    return W, keep, info


@torch.no_grad()
def sparsegpt_solve(W: torch.Tensor, U: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None,
                    blocksize: int = 128) -> torch.Tensor:
    """SparseGPT on a float32 W (pruned and updated in place) given U, the upper Cholesky factor of
    the damped H^-1 (`inverse_cholesky`, which also zeroes W's dead columns). Returns the keep
    mask. The prune stage calls it directly so that H is freed before the solve starts."""
    rows, cols = W.shape
    keep = torch.ones_like(W, dtype=torch.bool)
    if nm and blocksize % nm[1]:
        blocksize = max(nm[1], blocksize - blocksize % nm[1])
    for b0 in range(0, cols, blocksize):
        b1 = min(b0 + blocksize, cols)
        W1 = W[:, b0:b1].clone()
        U1 = U[b0:b1, b0:b1]
        err1 = torch.zeros_like(W1)
        d = torch.diag(U1)
        if nm is None:  # adaptive mask for the whole block, from the OBS saliency
            keep[:, b0:b1] = layer_mask(W1.pow(2) / d.pow(2)[None, :], sparsity)
        for i in range(b1 - b0):
            if nm and i % nm[1] == 0:
                g = slice(i, i + nm[1])
                keep[:, b0 + i:b0 + i + nm[1]] = nm_mask(W1[:, g].pow(2) / d[g].pow(2)[None, :], *nm)
            w = W1[:, i]
            q = torch.where(keep[:, b0 + i], w, torch.zeros_like(w))
            e = (w - q) / d[i]
            W1[:, i:].addr_(e, U1[i, i:], alpha=-1)  # rank-1 OBS update, in place
            W1[:, i] = q
            err1[:, i] = e
        W[:, b0:b1] = W1
        W[:, b1:] -= err1 @ U[b0:b1, b1:]
    W[~keep] = 0
    return keep
