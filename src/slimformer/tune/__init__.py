"""tune: search trim amounts, quantization formats and recovery for the fastest model within a
quality budget, measured in the runtime it will be served from (search.py)."""
from .config import OBJECTIVES, TuneConfig, parse_budget
from .search import TuneResult, tune

__all__ = ["OBJECTIVES", "TuneConfig", "TuneResult", "parse_budget", "tune"]
