"""What the reader of removed channels does about them: refit by least squares, or move their mean
into the bias.

- reconstruct: after input channels R of a linear y = W x + b are removed (FFN neurons feeding down,
  heads feeding o), the kept columns K and the bias are refitted to the layer's ORIGINAL output on
  calibration data: min ||W x + b - (W'_K x_K + b')||^2 over the calibration tokens. With the
  Gram matrix G of [x; 1] the solution is [W'_K, b'] = [W, b] G[:, K+] G[K+, K+]^-1 (K+ = K and the
  bias column). This is the closed-form layer-wise reconstruction that structured post-training
  methods use (e.g. Kwon et al. 2022; ZipLM, Kurtic et al. 2023); it contains FLAP's bias
  compensation as the special case of refitting the bias alone.
- bias (FLAP, An et al. 2024): b' = b + W[:, R] mean(x_R).
"""
from __future__ import annotations

import torch

UPDATES = ("reconstruct", "bias", "none")


def refit(W: torch.Tensor, b: torch.Tensor | None, xtx: torch.Tensor, x_sum: torch.Tensor, n: int,
          keep: torch.Tensor, damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W' [out, |keep|], b') minimising the output error on the calibration inputs. `xtx` and
    `x_sum` are sums over the n tokens of x x^T and x; `damp` is a fraction of the mean diagonal
    added to G[K+, K+] so that nearly dead channels cannot blow the solution up."""
    G = xtx.double() / max(n, 1)
    Wt = W.double()
    cols = keep.tolist()
    if b is not None:
        mu = x_sum.double() / max(n, 1)
        G = torch.cat([torch.cat([G, mu[:, None]], 1), torch.cat([mu, mu.new_ones(1)])[None]], 0)
        Wt = torch.cat([Wt, b.double()[:, None]], 1)
        cols = cols + [G.shape[0] - 1]
    cols = torch.tensor(cols, dtype=torch.long)
    A = G[cols][:, cols]
    A = A + torch.eye(len(cols), dtype=A.dtype) * damp * A.diagonal().mean().clamp_min(1e-12)
    rhs = Wt @ G[:, cols]  # [out, |K+|]
    new = torch.linalg.solve(A, rhs.T).T  # A is symmetric
    if b is not None:
        return new[:, :-1].to(W.dtype), new[:, -1].to(b.dtype)
    return new.to(W.dtype), None


def mean_into_bias(W: torch.Tensor, b: torch.Tensor, x_mean: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    return b + W[:, removed] @ x_mean[removed].to(W.dtype)
