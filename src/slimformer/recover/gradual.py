"""Gradual magnitude pruning during retraining (Zhu & Gupta 2017).

At each pruning step every selected block linear keeps the largest-magnitude weights at the
scheduled sparsity (layer-wise, as the paper's per-layer masks); weights already pruned are zero,
hence the smallest, and stay pruned. The masks live on `model.masks` like the prune stage's, so
the trainer keeps them applied after every optimizer step and the saved model stores them packed.
"""
from __future__ import annotations

import re

import torch

from ..model import Model, get_module
from ..prune.methods import magnitude_mask


def prunable(model: Model, ignore: list[str]) -> list[str]:
    return [n for n in model.arch.linears if not any(re.search(rx, n) for rx in ignore)
            and isinstance(getattr(get_module(model.module, n), "weight", None), torch.nn.Parameter)]


@torch.no_grad()
def prune_to(model: Model, names: list[str], sparsity: float, root=None) -> float:
    """Re-mask `names` at `sparsity`; returns the fraction of their weights now zero.
    `root` is the module the names resolve in (an Accelerate/peft wrapper's inner model)."""
    root = root if root is not None else model.module
    zeros = total = 0
    for name in names:
        weight = get_module(root, name).weight
        keep = magnitude_mask(weight.detach(), sparsity)
        old = model.masks.get(name)
        if old is not None:
            keep &= old.to(keep.device)
        model.masks[name] = keep
        weight.mul_(keep)
        zeros += int((~keep).sum())
        total += keep.numel()
    return zeros / max(total, 1)
