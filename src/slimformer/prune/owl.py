"""OWL (Yin et al. 2023): non-uniform layer sparsity from each block's share of outlier weights.

A block's layer-wise outlier distribution (LOD) is the fraction of its Wanda scores
|W_ij| * ||X_j|| that exceed `threshold` times the mean score of their layer. Blocks with more
outliers keep more weights: sparsities are spread linearly over [S - lambda, S + lambda] by LOD
(most outliers -> S - lambda), then shifted so their mean is exactly the target S.
"""
from __future__ import annotations

import torch

from .methods import wanda_score


def outlier_ratio(weights: list[torch.Tensor], norms: list[torch.Tensor], threshold: float) -> float:
    outliers = total = 0
    for W, n in zip(weights, norms):
        score = wanda_score(W, n)
        outliers += int((score > threshold * score.mean()).sum())
        total += score.numel()
    return outliers / total


def owl_sparsities(lod: list[float], target: float, lam: float) -> list[float]:
    x = torch.tensor(lod, dtype=torch.float64)
    spread = x.max() - x.min()
    norm = (x - x.min()) / spread if spread > 0 else torch.zeros_like(x)
    s = target + lam - 2 * lam * norm
    s = s - s.mean() + target
    return [float(v) for v in s.clamp(0.0, 0.99)]
