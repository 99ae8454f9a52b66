"""int8 attention scores: the query and key projections' outputs put on static int8 grids, so that
a runtime with int8 attention (OpenVINO's CPU plugin fuses Q/DQ-fed attention into one int8
subgraph) computes Q K^T on integer kernels, the way NNCF's transformer preset quantizes it.

Only where the projection's output is what the scores product reads: bidirectional encoders with
separate q / k projections, no rotary positions and no per-head q / k norms (both transform the
output first). The ranges come from one pass of the calibration set through the quantized
model, padding excluded, chosen by act_range.choose like the linears' input ranges.
"""
from __future__ import annotations

import torch

from ..errors import ConfigValueError
from ..model import Model, get_module
from ..nn.quant_linear import QuantLinear
from .act_range import choose

SAMPLE_ROWS = 128  # output rows sampled per calibration batch for the "mse" range


def attention_inputs(model: Model) -> list[str]:
    """The query and key projections whose outputs the scores product reads as they are."""
    arch = model.arch
    if model.is_causal or arch.rope is not None:
        raise ConfigValueError("int8 attention inputs are for encoders without rotary positions "
                               f"({arch.model_type} rotates or masks q / k after the projection); "
                               "use attention: float")
    names = []
    for blk in arch.blocks:
        a = blk.attn
        if a.fused or a.q_norm or a.k_norm:
            raise ConfigValueError(f"{blk.name}: q / k are fused or normalised after the projection, so "
                                   "their outputs are not the scores' inputs; use attention: float")
        names += [a.q, a.k]
    return names


@torch.no_grad()
def quantize_attention_inputs(model: Model, calib, method: str) -> dict[str, float]:
    """Give every query / key QuantLinear a symmetric output grid; returns {name: scale}.

    Symmetric (signed int8, zero point 0) whatever the linears' input grids: q / k are centred,
    and OpenVINO fuses the scores product into its int8 attention only from signed inputs (with
    a zero point it leaves the product in f32 behind separate u8 subtractions, measured slower)."""
    names = attention_inputs(model)
    mods = {n: get_module(model.module, n) for n in names}
    for n, m in mods.items():
        if not isinstance(m, QuantLinear):
            raise ConfigValueError(f"{n} is not quantized (ignore list?); int8 attention inputs need "
                                   "the query and key projections quantized")
    lo = dict.fromkeys(names, float("inf"))
    hi = dict.fromkeys(names, float("-inf"))
    rows: dict[str, list] = {n: [] for n in names}
    state = {"mask": None, "batch": 0}

    def hook(name):
        def fn(module, args, y):
            y = y.detach().float()
            if state["mask"] is not None:
                y = y[state["mask"]]
            y = y.reshape(-1, y.shape[-1])
            lo[name], hi[name] = min(lo[name], float(y.min())), max(hi[name], float(y.max()))
            if method == "mse":
                g = torch.Generator().manual_seed(state["batch"])
                rows[name].append(y[torch.randperm(y.shape[0], generator=g)[:SAMPLE_ROWS]].cpu())
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in mods.items()]
    try:
        device = next(model.module.parameters()).device
        for i, batch in enumerate(calib.batches):
            batch = {k: v.to(device) for k, v in batch.items()}
            mask = batch.get("attention_mask")
            state["mask"], state["batch"] = (mask.bool() if mask is not None else None), i
            model.module(**batch)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for n, m in mods.items():
        samples = torch.cat(rows[n]) if rows[n] else None
        out[n], _ = choose(lo[n], hi[n], True, method, samples)
        m.quantize_output(out[n], None)
    return out
