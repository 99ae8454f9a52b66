"""Per-linear input statistics, collected by forward hooks while calibration data runs.

A method asks for what it needs: "norms" (sum of squares per input channel: Wanda, OWL, trim
scores), "mean" (sum per input channel: FLAP's fluctuation and bias compensation),
"hessian" (sum of x x^T: SparseGPT, GPTQ), "absmax" (max |x| per channel: SmoothQuant, ranges),
"range" (min and max per channel: asymmetric activation ranges), "sample" (up to SAMPLE_ROWS random token
rows of every forward call, with a fixed seed: AWQ's scale search).
Padding positions are excluded through the token mask the engine sets per sample.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

KINDS = ("norms", "mean", "hessian", "absmax", "range", "sample")
SAMPLE_ROWS = 128  # per forward call; 64 calibration windows give 8192 tokens
GRAM_CHUNK = 128  # column block of the symmetric product below


def gram(x: torch.Tensor, chunk: int = GRAM_CHUNK) -> torch.Tensor:
    """x^T x for x [tokens, in], computing only the block upper triangle and mirroring it.

    The product is symmetric, so each row block of `chunk` columns is multiplied only with the
    columns from its own start onwards: (in + chunk) / (2 in) of the FLOPs of x.T @ x (0.54
    for a 1536-wide input), as BLAS's syrk would. Every product is a plain GEMM on strided
    views of x, so nothing is copied.
    """
    d = x.shape[1]
    if d <= 2 * chunk:
        return x.T @ x
    out = torch.empty(d, d, dtype=x.dtype, device=x.device)
    for i in range(0, d, chunk):
        j = min(i + chunk, d)
        row = x[:, i:j].T @ x[:, i:]  # [chunk, d - i]
        out[i:j, i:] = row
        out[j:, i:j] = row[:, j - i:].T
    return out


@dataclass
class LinearStats:
    want: frozenset
    n: int = 0  # tokens seen
    sq_sum: torch.Tensor | None = None  # [in]
    sum: torch.Tensor | None = None  # [in], float64
    xtx: torch.Tensor | None = None  # [in, in], float64 for a well-conditioned sum
    absmax: torch.Tensor | None = None  # [in]
    amin: torch.Tensor | None = None  # [in]
    amax: torch.Tensor | None = None  # [in]
    rows: list = field(default_factory=list, repr=False)  # sampled token rows, [k, in] each
    token_mask: torch.Tensor | None = field(default=None, repr=False)  # set by the engine per sample

    def update(self, x: torch.Tensor) -> None:
        # statistics in fp32 / fp64 even when the block runs under bf16 autocast (calibration dtype)
        with torch.autocast(x.device.type, enabled=False):
            self._update(x)

    def _update(self, x: torch.Tensor) -> None:
        x = x.detach()
        if self.token_mask is not None:
            x = x[self.token_mask]
        x = x.reshape(-1, x.shape[-1]).float()
        self.n += x.shape[0]
        if "norms" in self.want:
            s = x.pow(2).sum(0)
            self.sq_sum = s if self.sq_sum is None else self.sq_sum + s
        if "mean" in self.want:
            m = x.double().sum(0)
            self.sum = m if self.sum is None else self.sum + m
        if "hessian" in self.want:
            if self.xtx is None:
                self.xtx = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
            self.xtx.add_(gram(x))  # float32 product summed into float64 in place: no per-window copies
        if "absmax" in self.want:
            a = x.abs().amax(0)
            self.absmax = a if self.absmax is None else torch.maximum(self.absmax, a)
        if "range" in self.want:
            lo, hi = x.amin(0), x.amax(0)
            self.amin = lo if self.amin is None else torch.minimum(self.amin, lo)
            self.amax = hi if self.amax is None else torch.maximum(self.amax, hi)
        if "sample" in self.want:
            g = torch.Generator().manual_seed(len(self.rows))
            pick = torch.randperm(x.shape[0], generator=g)[:SAMPLE_ROWS]
            self.rows.append(x[pick].clone())

    def samples(self) -> torch.Tensor:
        """The sampled input rows, [tokens, in]."""
        return torch.cat(self.rows)

    @property
    def norms(self) -> torch.Tensor:
        """||X_j||_2 over every calibration token, per input channel (Wanda's activation term)."""
        return self.sq_sum.sqrt()

    @property
    def mean(self) -> torch.Tensor:
        """Mean input per channel over every calibration token."""
        return (self.sum / max(self.n, 1)).float()

    @property
    def variance(self) -> torch.Tensor:
        """Variance over tokens per input channel (FLAP's fluctuation); needs norms and mean."""
        n = max(self.n, 1)
        mean = self.sum / n
        return (self.sq_sum.double() / n - mean.pow(2)).clamp_min(0).float()

    def rescale_inputs(self, d: torch.Tensor) -> None:
        """The statistics of x * d (d [in], per input channel), from those of x: what a layer
        sees once a smoothing scale has been applied to its input (see quant/smoothing.py)."""
        d = d.detach().float()
        if self.sq_sum is not None:
            self.sq_sum = self.sq_sum * d.pow(2)
        if self.sum is not None:
            self.sum = self.sum * d.double()
        if self.xtx is not None:
            d64 = d.double()
            self.xtx.mul_(d64[:, None]).mul_(d64[None, :])
        if self.absmax is not None:
            self.absmax = self.absmax * d.abs()
        if self.amin is not None:  # a negative factor swaps a channel's ends
            lo, hi = self.amin * d, self.amax * d
            self.amin, self.amax = torch.minimum(lo, hi), torch.maximum(lo, hi)
        self.rows = [r * d for r in self.rows]

    def hessian(self, dtype: torch.dtype = torch.float32, release: bool = False) -> torch.Tensor:
        """H = 2/n X^T X (a fresh tensor), the layer-wise reconstruction Hessian of SparseGPT / GPTQ.
        release=True is for the sum's last reader: the float64 sum is scaled in place and handed
        over (the same values, no copy), and these statistics hold no Hessian afterwards."""
        if release:
            xtx, self.xtx = self.xtx, None
            return xtx.mul_(2.0 / max(self.n, 1)).to(dtype)
        return (self.xtx * (2.0 / max(self.n, 1))).to(dtype)


class PassComplete(Exception):
    """Raised by the hook of the last statistics-carrying linear a sample reaches: every input
    the method asked for has been seen, so the rest of the block's forward is skipped."""


class StatsCollector:
    """Pre-forward hooks on the linears of one block; removed by close().

    `groups` lists linears that read the same input (q/k/v, gate/up): one hook and one
    LinearStats serve the whole group, so a Hessian is accumulated once, not three times.
    Within a sample, once every group has seen its input the hook raises PassComplete before
    the linear runs: the calibration pass's own outputs are never read (the engine propagates
    through the rewritten block), so the last linear (the FFN's down projection: about a fifth
    of a Llama block's FLOPs) and whatever follows it are not computed.
    """

    def __init__(self, root: nn.Module, groups: list[list[str]], want: set[str]):
        unknown = set(want) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown statistics {sorted(unknown)}; known: {KINDS}")
        self.stats: dict[str, LinearStats] = {}
        self._shared: list[LinearStats] = []
        self._handles = []
        self._pending: set[int] = set()
        for group in (g for g in groups if g):
            shared = LinearStats(frozenset(want))
            self._shared.append(shared)
            self.stats.update({name: shared for name in group})
            hook = self._hook(len(self._shared) - 1, shared)
            self._handles.append(root.get_submodule(group[0]).register_forward_pre_hook(hook))

    def _hook(self, index: int, stats: LinearStats):
        def hook(module, args):
            stats.update(args[0])
            self._pending.discard(index)
            if not self._pending:
                raise PassComplete
        return hook

    def start_sample(self, mask: torch.Tensor | None) -> None:
        """Before each sample: its token mask (padding excluded), and every group pending."""
        self._pending = set(range(len(self._shared)))
        for s in self._shared:
            s.token_mask = mask

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self.start_sample(None)
