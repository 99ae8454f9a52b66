"""The trim stage: structured removal of heads (GQA-aware), FFN neurons, blocks, hidden channels,
and low-rank factorisation, so the dense matrices get smaller."""
from .lowrank import LowRankLinear, factorize, svd_factors
from .stage import TrimConfig, trim_model

__all__ = ["LowRankLinear", "TrimConfig", "factorize", "svd_factors", "trim_model"]
