"""Making a calibration Hessian safe to invert (shared by SparseGPT and GPTQ).

Dead input channels (never active in calibration) get H_jj = 1 and their weights zeroed, as
they carry no information; dampening adds `damp` x mean(diag H) to the diagonal; if Cholesky
still fails (not positive definite in floating point), dampening is multiplied by 10 and
retried, and the retry is reported rather than crashing.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..heap import release_free_heap


@dataclass
class HessianInfo:
    damp: float  # relative dampening finally used
    retries: int
    dead_channels: int


def inverse_cholesky(H: torch.Tensor, W: torch.Tensor, damp: float = 0.01, max_retries: int = 6,
                     overwrite: bool = False) -> tuple[torch.Tensor, HessianInfo]:
    """Upper Cholesky factor U of H^-1 (H^-1 = U^T U); zeroes W's dead columns in place.

    overwrite=True hands a float64 H over: it is damped in place and then overwritten by H^-1,
    so at most two [in, in] float64 buffers exist at once (H / H^-1 and the factor; 18 MiB each
    at 1536 wide). Pass it as a temporary (`inverse_cholesky(stats.hessian(...), ...)`) so that
    nothing else keeps the buffer alive after the call.
    """
    H = H.to(torch.float64, copy=not overwrite)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0
    mean_diag = float(H.diagonal().mean())
    rel, added = damp, 0.0
    for attempt in range(max_retries + 1):
        H.diagonal().add_(rel * mean_diag - added)
        added = rel * mean_diag
        L, info = torch.linalg.cholesky_ex(H)
        if int(info) == 0:
            # H^-1 written over H when it was handed over (the same values as a fresh tensor)
            Hinv = torch.cholesky_inverse(L, out=H) if overwrite else torch.cholesky_inverse(L)
            del L
            U, info2 = torch.linalg.cholesky_ex(Hinv, upper=True)
            if int(info2) == 0:
                del Hinv, H
                release_free_heap()  # the factor's and inverse's float64 buffers
                return U.float(), HessianInfo(rel, attempt, int(dead.sum()))
            del U
            if overwrite:  # H was overwritten: recover the damped H to damp it further
                H = torch.linalg.inv(Hinv)
                H = (H + H.T).mul_(0.5)
            del Hinv
        rel *= 10
    raise FloatingPointError(f"Hessian not positive definite even with dampening {rel / 10:g}")
