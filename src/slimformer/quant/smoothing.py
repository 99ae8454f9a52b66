"""Smoothing: per-input-channel scales moved between a layer's input and its weights, as an exact
transform of the model that runs before any quantizer (SmoothQuant's and AWQ's scales).

For a group of linears reading one input x (q/k/v, gate/up, o, down) and scales s [in], every
linear of the group computes (x / s) (W s)^T = x W^T. Where the op producing x feeds nothing else
(a pre-norm's weight, v's rows under o when every head has its own v, up's rows under down in a
gated FFN) the division is folded into that producer, and *every* consumer of the producer gets
W s: layers kept in full precision (`ignore`) too, so they compute exactly what they did. Where
it cannot be folded (a post-norm whose output also feeds the residual) the scale stays inside
the quantized layers (QuantLinear.input_scale = 1 / s), and only they are scaled.

Why one transform owns both sides: the statistics collected before smoothing describe x, while
the quantizer must see the input the layer really receives, x / s. The transform rescales the
shared statistics with the weights (H -> diag(1/s) H diag(1/s), absmax / s, samples / s), so
a quantizer that runs after it reads consistent inputs by construction.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..engine.stats import LinearStats
from ..model import BlockMap, Model, get_module
from ..nn.spec import QuantSpec
from .methods import awq_scales, smoothquant_scales

SMOOTHING = ("smoothquant", "awq")


@dataclass
class SmoothingConfig:
    method: str  # smoothquant | awq
    alpha: float = 0.5  # SmoothQuant's migration strength
    awq_grid: int = 20  # AWQ: alphas 0, 1/grid, ..., (grid-1)/grid searched

    def __post_init__(self):
        if self.method not in SMOOTHING:
            raise ValueError(f"smoothing method {self.method!r} unknown; methods: {', '.join(SMOOTHING)}")

    def wants(self) -> set[str]:
        """The calibration statistics this smoothing reads."""
        return {"absmax"} if self.method == "smoothquant" else {"sample"}


@dataclass
class GroupScale:
    """The scale chosen for one input group and where it went."""
    group: list[str]  # every linear reading the input
    scaled: list[str]  # the linears whose weights were multiplied by s
    target: tuple | None  # ("norm", producer) or ("rows", producer, first_row) it was folded into; None: in-layer
    s: torch.Tensor
    alpha: float | None = None  # AWQ's chosen exponent


def fold_target(blk: BlockMap, group: list[str]) -> tuple | None:
    """Where a per-input-channel scale of `group` (the whole input group) can be folded:
    ("norm", name) or ("rows", name, first_row) of the op producing the group's input, when that
    output feeds nothing but the group. For rows, the scale's channels are rows first_row, first_row
    + 1, ... of the producer (a slice of a fused projection: v inside [q; k; v], up inside [gate; up]).
    Sandwich norms (Gemma 3's post-attention / post-FFN norms) act on the sub-layers' outputs, after
    o and down, so none of these producers or consumers changes with them."""
    attn, ffn = blk.attn, blk.ffn
    if group[0] in attn.inputs:
        # no attn_norm (ModernBERT's first block reads the residual itself): nothing to fold into
        return ("norm", blk.attn_norm) if blk.pre_norm and blk.attn_norm else None
    if ffn.up in group:
        return ("norm", blk.ffn_norm) if blk.pre_norm else None
    # o reads attention(v) head by head: v's rows scale o's input channels only when every query
    # head has its own v head (GQA would need one scale shared by a KV group's query heads)
    if group == [attn.o] and attn.n_kv_heads == attn.n_heads:
        if attn.v:
            return ("rows", attn.v, 0)
        if attn.qkv:
            return ("rows", attn.qkv, 2 * attn.n_heads * attn.head_dim)
    if group == [ffn.down] and ffn.gated:
        # act(gate) * up: scaling up's rows scales down's input; a fused [gate; up] only its up half
        return ("rows", ffn.up, ffn.width if ffn.fused_gate_up else 0)
    return None


@torch.no_grad()
def _divide_producer(model: Model, target: tuple, s: torch.Tensor) -> None:
    mod = get_module(model.module, target[1])
    if target[0] == "norm":
        # the norm's effect is (offset + w) (Gemma stores w with offset 1): divide that, not w
        off = model.arch.norm.offset
        w = mod.weight
        w.copy_((off + w) / s.to(w.dtype) - off)
        if getattr(mod, "bias", None) is not None:
            mod.bias.div_(s.to(mod.bias.dtype))
        return
    rows = slice(target[2], target[2] + s.numel())
    mod.weight[rows].div_(s.to(mod.weight.dtype)[:, None])
    if getattr(mod, "bias", None) is not None:
        mod.bias[rows].div_(s.to(mod.bias.dtype))


@torch.no_grad()
def scale_group(model: Model, group: list[str], quantized: list[str], target, s: torch.Tensor,
                stats: LinearStats | None) -> list[str]:
    """Apply s to one input group; returns the linears whose weights now hold W s.
    Folded: the producer divides by s and every consumer is scaled (the function is unchanged).
    In-layer: only `quantized` are scaled; each must then get input_scale 1 / s."""
    scaled = list(group) if target is not None else list(quantized)
    if target is not None:
        _divide_producer(model, target, s)
    for name in scaled:
        w = get_module(model.module, name).weight
        w.mul_(s.to(w.dtype)[None, :])
    if stats is not None:
        stats.rescale_inputs(1.0 / s)
    return scaled


def smooth_block(model: Model, blk: BlockMap, stats: dict[str, LinearStats], cfg: SmoothingConfig,
                 quantized: set[str], spec: QuantSpec) -> list[GroupScale]:
    """Choose and apply every input group's scale in one block. Scales come from the weights as
    they came in: each is computed before any of this block's scales is applied."""
    plan = []
    for group in blk.input_groups:
        members = [n for n in group if n in quantized]
        if not members:
            continue  # nothing here is quantized: leave the input alone
        target = fold_target(blk, group)
        touched = list(group) + ([target[1]] if target is not None and target[0] == "rows" else [])
        if not all(isinstance(get_module(model.module, n), nn.Linear) for n in touched):
            continue  # a low-rank (or other compressed) consumer or producer cannot be scaled exactly
        st = stats[members[0]]
        Ws = [get_module(model.module, n).weight.detach().float() for n in members]
        alpha = None
        if cfg.method == "smoothquant":
            # SmoothQuant's own targets (the attention and FFN inputs), and any input it can fold away
            if not (group[0] in blk.attn.inputs or blk.ffn.up in group or target is not None):
                continue
            s = smoothquant_scales(st.absmax, Ws, float(cfg.alpha))
        else:
            if target is None:
                continue  # AWQ scales only where they fold away
            s, alpha, _ = awq_scales(Ws, st.samples(), spec, cfg.awq_grid)
        plan.append((group, members, target, s, st, alpha))
    out = []
    for group, members, target, s, st, alpha in plan:
        scaled = scale_group(model, group, members, target, s, st)
        out.append(GroupScale(group, scaled, target, s, alpha))
    return out
