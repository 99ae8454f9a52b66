"""GGML types per tensor under a size target, from measured sensitivity.

For every block linear and every type of the ladder (after llama.cpp's width fallbacks), the
sensitivity is the KL divergence of the model's next-token distribution (or, for encoders, the
mean squared change of the last hidden states) from the original's on calibration windows when
that linear alone is rounded onto that type's grid. The allocation starts every linear at its
cheapest type and, while the bits fit the target (bits per weight over the block linears),
upgrades the linear whose next type buys the largest drop of sensitivity per added bit (a greedy
knapsack on the sum of single-tensor sensitivities). The embedding table and the head are not part
of the target: their type is the export's (embedding_dtype) or the lm_head option's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigValueError
from ..model import Model, get_module
from ..nn.ggml_grid import choose_grid
from ..nn.ggml_types import type_for_width

LADDER = ("q3_k", "q4_k", "q5_k", "q6_k", "q8_0")


@dataclass
class Allocation:
    types: dict[str, str]  # linear -> GGML type
    bpw: float  # achieved, over the block linears
    target: float
    sensitivity: dict[str, dict[str, float]]  # linear -> {type: measured divergence}

    def summary(self) -> dict:
        counts: dict[str, int] = {}
        for t in self.types.values():
            counts[t] = counts.get(t, 0) + 1
        return {"target_bpw": self.target, "bpw": round(self.bpw, 4), "types": counts}


def _divergence(model: Model, batches: list[dict], ref: list[torch.Tensor]) -> float:
    total = 0.0
    with torch.no_grad():
        for batch, r in zip(batches, ref):
            out = _output(model, batch)
            if model.is_causal:
                total += float((r.exp() * (r - out)).sum(-1).mean())
            else:
                total += float((out - r).pow(2).mean())
    return total / len(batches)


def _output(model: Model, batch: dict) -> torch.Tensor:
    out = model.module(**batch)
    if model.is_causal:
        return torch.log_softmax(out.logits.float(), -1)
    return out.last_hidden_state.float()


@torch.no_grad()
def allocate_types(model: Model, names: list[str], target_bpw: float, batches: list[dict],
                   ladder: tuple[str, ...] = LADDER, fixed: dict[str, str] | None = None) -> Allocation:
    """fixed: linears whose type the user named (not measured, not changed; their bits count)."""
    if model.lazy is not None:
        raise ConfigValueError("quantize ggml_bpw measures each linear on whole-model passes; load the model "
                               "without lazy (streaming) blocks, or give ggml_types by hand")
    fixed = fixed or {}
    ref = [_output(model, b) for b in batches]
    sizes, options, sens = {}, {}, {}
    fixed_bits = fixed_size = 0
    for name, t in fixed.items():
        W = get_module(model.module, name).weight
        fixed_size += W.numel()
        fixed_bits += type_for_width(t, W.shape[1]).bpw * W.numel()
    names = [n for n in names if n not in fixed]
    for name in names:
        lin = get_module(model.module, name)
        W = lin.weight.detach()
        sizes[name] = W.numel()
        kinds = []
        for t in ladder:
            kind = type_for_width(t, W.shape[1])
            if kind.name not in [k.name for k in kinds]:
                kinds.append(kind)
        options[name] = sorted(kinds, key=lambda k: k.bpw)
        sens[name] = {}
        saved = W.clone()
        for kind in options[name]:
            grid = choose_grid(saved, kind)
            lin.weight.copy_(grid.dequantize(grid.quantize(saved)).to(W.dtype))
            sens[name][kind.name] = _divergence(model, batches, ref)
        lin.weight.copy_(saved)
    total = sum(sizes.values()) + fixed_size
    budget = target_bpw * total
    level = dict.fromkeys(names, 0)
    bits = fixed_bits + sum(options[n][0].bpw * sizes[n] for n in names)
    if bits > budget:
        cheapest = bits / total
        raise ConfigValueError(f"quantize ggml_bpw {target_bpw:g} is below the cheapest types of the ladder "
                               f"({cheapest:.3f} bits per weight here); raise it or add a smaller type to ggml_ladder")
    while True:
        best, best_gain = None, 0.0
        for n in names:
            i = level[n]
            if i + 1 >= len(options[n]):
                continue
            a, b = options[n][i], options[n][i + 1]
            extra = (b.bpw - a.bpw) * sizes[n]
            if extra <= 0 or bits + extra > budget:  # equal-size types (q4_0 / q4_k): no step
                continue
            gain = (sens[n][a.name] - sens[n][b.name]) / extra
            if best is None or gain > best_gain:
                best, best_gain = n, gain
        if best is None:
            break
        i = level[best]
        bits += (options[best][i + 1].bpw - options[best][i].bpw) * sizes[best]
        level[best] = i + 1
    types = {**{n: type_for_width(t, get_module(model.module, n).weight.shape[1]).name for n, t in fixed.items()},
             **{n: options[n][level[n]].name for n in names}}
    return Allocation(types, bits / total, target_bpw, sens)
