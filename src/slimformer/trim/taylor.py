"""First-order Taylor importance (Molchanov et al. 2019) from gradients of the calibration loss.

For a structure whose removal equals zeroing a set of weights w_S, the first-order change of the
loss is -sum_S grad * w. Per batch that sum is squared, and the squares are summed over batches:
  FFN neuron j:      column j of down (and its share of nothing else: up/gate rows feed only it);
  query head h:      the head's columns of o;
  hidden channel c:  every weight on channel c: embedding columns, reader columns, writer rows and
                     bias entries, norm weight / bias entries (sandwich norms too), pooler row and column, LM head column.
"""
from __future__ import annotations

import torch

from ..model import Model, get_module
from .objective import calibration_loss


def _gw(model: Model, name: str, attr: str = "weight") -> torch.Tensor | None:
    p = getattr(get_module(model.module, name), attr, None)
    if p is None or p.grad is None:
        return None
    return (p.grad * p.data).float()


def _hidden_sum(model: Model) -> torch.Tensor:
    arch = model.arch
    total = torch.zeros(arch.hidden_size)
    seen = set()

    def add(name, attr, dim):
        nonlocal total
        p = getattr(get_module(model.module, name), attr, None)
        if p is None or p.grad is None or id(p) in seen:
            return
        seen.add(id(p))
        gw = (p.grad * p.data).float()
        total += gw if gw.dim() == 1 else gw.sum(dim)

    for name in arch.embeddings:
        add(name, "weight", 0)
    norms = [arch.embedding_norm, arch.final_norm] + [n for b in arch.blocks for n in
                                                      (b.attn_norm, b.ffn_norm, b.post_attn_norm, b.post_ffn_norm)]
    for name in filter(None, norms):
        add(name, "weight", 0)
        add(name, "bias", 0)
    for blk in arch.blocks:
        for name in blk.attn.inputs + blk.ffn.inputs:
            add(name, "weight", 0)
        for name in (blk.attn.o, blk.ffn.down):
            add(name, "weight", 1)
            add(name, "bias", 0)
    if arch.pooler:
        gw = _gw(model, arch.pooler)
        if gw is not None:
            total += gw.sum(0) + gw.sum(1)
        b = _gw(model, arch.pooler, "bias")
        if b is not None:
            total += b
    if arch.head:
        add(arch.head, "weight", 0)
    return total


def taylor_scores(model: Model, batches: list[dict], targets: list, hidden: bool = False) -> dict:
    """{("ffn", i): [width], ("heads", i): [n_heads], "hidden": [hidden]} accumulated over batches."""
    arch = model.arch
    out: dict = {}

    def acc(key, value):
        out[key] = value.pow(2) + out.get(key, 0)

    was_training = model.module.training
    model.module.eval()
    try:
        for batch, target in zip(batches, targets):
            model.module.zero_grad(set_to_none=True)
            with torch.enable_grad():
                calibration_loss(model, batch, target).backward()
            for blk in arch.blocks:
                acc(("ffn", blk.index), _gw(model, blk.ffn.down).sum(0))
                a = blk.attn
                acc(("heads", blk.index), _gw(model, a.o).sum(0).view(a.n_heads, a.head_dim).sum(1))
            if hidden:
                acc("hidden", _hidden_sum(model))
    finally:
        model.module.zero_grad(set_to_none=True)
        model.module.train(was_training)
    return out
