"""STS Benchmark: Spearman correlation (x100) of embedding cosine against gold similarity."""
from __future__ import annotations

import time

import torch
from scipy.stats import spearmanr

from ..data import Pair
from ..model import Model
from ..results import EvalResult
from .embed import encode


def sts(model: Model, pairs: list[Pair], data: str = "", split: str | None = None,
        batch_size: int = 64) -> EvalResult:
    t0 = time.perf_counter()
    a = encode(model, [p.a for p in pairs], batch_size)
    b = encode(model, [p.b for p in pairs], batch_size)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    rho = spearmanr(cos.numpy(), [p.score for p in pairs]).statistic
    return EvalResult(
        task="sts", model=model.name, metric="spearman_x100", value=float(rho) * 100,
        higher_is_better=True, data=data, split=split, n=len(pairs),
        protocol=f"Spearman x100 of cosine between {model.pooling.mode}-pooled embeddings "
                 f"(max {model.pooling.max_length or model.arch.max_positions} tokens) and gold scores",
        wall_s=time.perf_counter() - t0)
