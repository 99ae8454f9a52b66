"""Low-rank factorisation of a linear: W [out, in] ~ B [out, r] @ A [r, in], as two smaller linears.

- plain SVD: the best rank-r approximation of W itself (Eckart-Young).
- activation-aware ("asvd", the whitening of SVD-LLM, Wang et al. 2024): with the calibration
  Gram matrix X^T X = S S^T (Cholesky), take the SVD of W S, truncate to rank r, and map back
  with S^-1. The product then minimises ||(W - W') X^T||_F, the error on the layer's real inputs,
  not on the weights.

A factorisation saves time only when r (in + out) is well below in * out (two GEMMs instead of
one); `worth_factoring` applies that rule so a linear is never replaced by something slower.
"""
from __future__ import annotations

import torch
from torch import nn

from ..nn.lowrank import LowRankLinear

# Two GEMMs and an extra activation round trip cost more than their FLOPs: require this margin.
MAX_COST_RATIO = 0.8


def worth_factoring(n_in: int, n_out: int, rank: int) -> bool:
    return rank * (n_in + n_out) <= MAX_COST_RATIO * n_in * n_out


def svd_factors(W: torch.Tensor, rank: int, gram: torch.Tensor | None = None,
                damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """(B [out, r], A [r, in]) with B @ A the rank-r approximation of W; activation-aware when
    `gram` (X^T X of the layer's inputs) is given. `damp` (fraction of the mean diagonal) keeps
    the Cholesky factor invertible when some input channels are (nearly) dead."""
    W64 = W.double()
    if gram is None:
        U, s, Vh = torch.linalg.svd(W64, full_matrices=False)
        B, A = U[:, :rank] * s[:rank], Vh[:rank]
    else:
        G = gram.double()
        G = G + torch.eye(G.shape[0], dtype=G.dtype) * damp * G.diagonal().mean().clamp_min(1e-12)
        S = torch.linalg.cholesky(G)  # G = S S^T
        U, s, Vh = torch.linalg.svd(W64 @ S, full_matrices=False)
        B = U[:, :rank] * s[:rank]
        A = torch.linalg.solve_triangular(S, Vh[:rank], upper=False, left=False)  # A S = Vh_r
    return B.to(W.dtype), A.to(W.dtype)


def factorize(lin: nn.Linear, rank: int, gram: torch.Tensor | None = None) -> LowRankLinear:
    B, A = svd_factors(lin.weight.data, rank, gram)
    new = LowRankLinear.empty(lin.in_features, rank, lin.out_features, lin.bias is not None)
    with torch.no_grad():
        new.a.weight.copy_(A)
        new.b.weight.copy_(B)
        if lin.bias is not None:
            new.b.bias.copy_(lin.bias)
    return new.to(lin.weight.device)
