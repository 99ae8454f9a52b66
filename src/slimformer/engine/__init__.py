from .sequential import capture_block_inputs, run_sequential
from .stats import LinearStats, StatsCollector

__all__ = ["LinearStats", "StatsCollector", "capture_block_inputs", "run_sequential"]
