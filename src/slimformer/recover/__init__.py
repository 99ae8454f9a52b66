"""The recover stage: distillation from the original model, with masks (pruning), grids (QAT)
and trimmed shapes kept; Accelerate for one CPU or many GPUs; optional LoRA and gradual pruning."""
from .stage import RecoverConfig, recover

__all__ = ["RecoverConfig", "recover"]
