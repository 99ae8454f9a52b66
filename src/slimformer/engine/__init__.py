from .sequential import block_scope, capture_block_inputs, run_sequential
from .stats import LinearStats, StatsCollector

__all__ = ["LinearStats", "StatsCollector", "block_scope", "capture_block_inputs", "run_sequential"]
