"""LoRA adapters (Hu et al. 2021) through the `peft` library, for memory-bound recovery.

Only the low-rank adapters A, B of the chosen block linears train (W x + (alpha / r) B A x); the
dense weights stay frozen, so optimizer state is tiny. At the end the adapters are merged into
the weights (peft's merge_and_unload) and the plain model comes back. A merged update is dense:
in a pruned model the trainer re-applies the masks after merging, so pruned weights are exactly
zero again (the adapters trained without that constraint: the report's final evaluation, made
after merging and masking, is the honest figure).
"""
from __future__ import annotations

from torch import nn

from ..errors import ConfigValueError


def add_lora(module: nn.Module, names: list[str], rank: int, alpha: float) -> nn.Module:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigValueError("lora needs the peft package: pip install peft") from None
    bad = [n for n in names if not isinstance(module.get_submodule(n), nn.Linear)]
    if bad:
        raise ConfigValueError(f"lora wraps plain linears only; {bad[0]} is {type(module.get_submodule(bad[0])).__name__} "
                               "(quantized layers: put recover before quantize, or set lora: 0 for full QAT)")
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=names, bias="none")
    return get_peft_model(module, cfg)


def merge_lora(peft_module) -> nn.Module:
    return peft_module.merge_and_unload()
