"""Which whole blocks to drop: by block influence, or by the measured loss change of each removal.

- block_influence (ShortGPT, Men et al. 2024): BI_i = 1 - E_tokens[cos(x_in, x_out)] of block i on
  calibration data, padding excluded; the blocks that change their input least go first. One pass.
- loss: greedy and iterative: each round, every remaining block (or the `candidates` with the
  lowest block influence) is skipped in turn on calibration data, and the block whose removal
  raises the calibration loss least (objective.py) is dropped for good before the next round. This
  sees interactions one-shot influence misses (two adjacent blocks that each look redundant).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..model import Model, get_module
from .objective import calibration_loss


def _hidden_in(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _hidden_out(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def block_influence(model: Model, batches: list[dict]) -> torch.Tensor:
    n = model.arch.n_layers
    cos_sum, count = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    current: dict = {}
    handles = []

    def hook(i):
        def fn(module, args, kwargs, out):
            x, y = _hidden_in(args, kwargs).float(), _hidden_out(out).float()
            cos = F.cosine_similarity(x, y, dim=-1)  # [batch, seq]
            mask = current.get("mask")
            cos = cos[mask] if mask is not None else cos.reshape(-1)
            cos_sum[i] += cos.double().sum()
            count[i] += cos.numel()
        return fn

    for blk in model.arch.blocks:
        handles.append(get_module(model.module, blk.name).register_forward_hook(hook(blk.index), with_kwargs=True))
    try:
        for b in batches:
            mask = b.get("attention_mask")
            current["mask"] = mask.bool() if mask is not None else None
            model.module(**b, **({"use_cache": False} if model.is_causal else {}))
    finally:
        for h in handles:
            h.remove()
    return (1.0 - cos_sum / count.clamp_min(1)).float()


@contextlib.contextmanager
def skipped(model: Model, indices):
    """Blocks `indices` pass their input through unchanged (their output is discarded)."""
    def passthrough(module, args, kwargs, out):
        x = _hidden_in(args, kwargs)
        return (x,) + tuple(out[1:]) if isinstance(out, tuple) else x

    handles = [get_module(model.module, model.arch.blocks[i].name).register_forward_hook(passthrough, with_kwargs=True)
               for i in indices]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def mean_loss(model: Model, batches: list[dict], targets: list) -> float:
    return sum(float(calibration_loss(model, b, t)) for b, t in zip(batches, targets)) / len(batches)


def choose_by_loss(model: Model, n_drop: int, batches: list[dict], targets: list, influence: torch.Tensor,
                   candidates: int = 0, progress: bool = True) -> tuple[list[int], list[dict]]:
    """Greedy iterative removal by measured calibration loss; returns (dropped, per-round log)."""
    dropped: list[int] = []
    rounds = []
    order = torch.argsort(influence).tolist()  # lowest influence first
    for r in range(n_drop):
        remaining = [i for i in order if i not in dropped]
        pool = remaining[:candidates] if candidates else remaining
        losses = {}
        for i in tqdm(pool, desc=f"loss of each removal (round {r + 1}/{n_drop})", disable=not progress, leave=False):
            with skipped(model, dropped + [i]):
                losses[i] = mean_loss(model, batches, targets)
        best = min(losses, key=losses.get)
        dropped.append(best)
        rounds.append({"dropped": best, "loss": round(losses[best], 5),
                       "measured": {str(k): round(v, 5) for k, v in sorted(losses.items())}})
    return dropped, rounds
