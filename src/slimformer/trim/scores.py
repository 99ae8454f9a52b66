"""Importance of FFN neurons, attention heads and hidden channels: higher means keep.

Criteria (the recipe's `score`):
- magnitude:   L2 norm of every weight the structure owns (its rows and columns).
- activation:  structured Wanda ("Wanda-sp", as in An et al. 2024): for each input channel j of the
               projection that reads the structure's output (down for a neuron, o for a head's
               channels), ||X_j||_2 * ||W[:, j]||_2, summed over the structure's channels.
- fluctuation: FLAP (An et al. 2024): Var_tokens(X_j) * ||W[:, j]||_2^2, summed likewise: a channel
               whose input barely varies can be replaced by its mean (bias compensation).
- taylor:      first-order Taylor of the calibration loss for removing the structure (Molchanov et
               al. 2019): per batch (sum over the structure's output weights of grad * weight)^2,
               summed over batches. Removing neuron j equals zeroing column j of down, so that sum
               is exactly d loss / d gate_j of a gate multiplying the neuron.

Hidden channels c use the readers of the residual stream instead (the q/k/v and up/gate inputs
of every block): ||X_c|| * ||W[:, c]|| (activation), Var(X_c) ||W[:, c]||^2 (fluctuation), and
for taylor every weight on channel c (embedding column, reader columns, writer rows, norms).
"""
from __future__ import annotations

import torch

from ..model import BlockMap, Model, get_module

CRITERIA = ("magnitude", "activation", "fluctuation", "taylor")
STATS_FOR = {"activation": {"norms"}, "fluctuation": {"norms", "mean"}}


def _w(model: Model, name: str) -> torch.Tensor:
    return get_module(model.module, name).weight.data.float()


def _column_scores(W: torch.Tensor, stats, criterion: str) -> torch.Tensor:
    """Per input channel j of W [out, in]: Wanda-sp or FLAP."""
    col_sq = W.pow(2).sum(0)
    if criterion == "activation":
        return stats.norms * col_sq.sqrt()
    return stats.variance * col_sq  # fluctuation


def _qkv_rows(blk: BlockMap, model: Model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[heads, head_dim, in] views of q, k, v (k, v per KV head)."""
    a = blk.attn
    if a.fused:  # [q: heads * hd; k: kv * hd; v: kv * hd]
        kv = a.n_kv_heads * a.head_dim
        q, k, v = _w(model, a.qkv).split([a.n_heads * a.head_dim, kv, kv])
    else:
        q, k, v = _w(model, a.q), _w(model, a.k), _w(model, a.v)
    return (q.view(a.n_heads, a.head_dim, -1), k.view(a.n_kv_heads, a.head_dim, -1),
            v.view(a.n_kv_heads, a.head_dim, -1))


def ffn_scores(model: Model, blk: BlockMap, criterion: str, stats=None, taylor=None) -> torch.Tensor:
    f = blk.ffn
    if criterion == "taylor":
        return taylor[("ffn", blk.index)]
    if criterion == "magnitude":
        up = _w(model, f.up).pow(2).sum(1)
        if f.fused_gate_up:  # neuron j owns rows j (gate) and width + j (up)
            up = up[:f.width] + up[f.width:]
        sq = up + _w(model, f.down).pow(2).sum(0)
        if f.gate:
            sq = sq + _w(model, f.gate).pow(2).sum(1)
        return sq.sqrt()
    return _column_scores(_w(model, f.down), stats[f.down], criterion)


def head_scores(model: Model, blk: BlockMap, criterion: str, stats=None, taylor=None) -> torch.Tensor:
    """One score per query head. A KV group's score is the sum of its query heads' (kv_scores)."""
    a = blk.attn
    if criterion == "taylor":
        return taylor[("heads", blk.index)]
    Wo = _w(model, a.o)
    if criterion == "magnitude":
        q, k, v = _qkv_rows(blk, model)
        sq = q.pow(2).sum((1, 2)) + Wo.pow(2).sum(0).view(a.n_heads, a.head_dim).sum(1)
        if a.n_kv_heads == a.n_heads:  # multi-head: k and v rows belong to the head too
            sq = sq + k.pow(2).sum((1, 2)) + v.pow(2).sum((1, 2))
        return sq.sqrt()
    return _column_scores(Wo, stats[a.o], criterion).view(a.n_heads, a.head_dim).sum(1)


def kv_scores(blk: BlockMap, q_scores: torch.Tensor) -> torch.Tensor:
    a = blk.attn
    return q_scores.view(a.n_kv_heads, a.n_heads // a.n_kv_heads).sum(1)


def hidden_readers(blk: BlockMap) -> list[list[str]]:
    """Groups of linears reading the residual stream (one input each)."""
    return [blk.attn.inputs, blk.ffn.inputs]


def hidden_scores(model: Model, criterion: str, stats=None, taylor=None) -> torch.Tensor:
    arch = model.arch
    if criterion == "taylor":
        return taylor["hidden"]
    total = torch.zeros(arch.hidden_size)
    if criterion == "magnitude":
        for name in arch.embeddings:
            total += _w(model, name).pow(2).sum(0)
        for blk in arch.blocks:
            for group in hidden_readers(blk):
                total += sum(_w(model, n).pow(2).sum(0) for n in group)
            total += _w(model, blk.attn.o).pow(2).sum(1) + _w(model, blk.ffn.down).pow(2).sum(1)
        return total.sqrt()
    for blk in arch.blocks:
        for group in hidden_readers(blk):
            W = torch.cat([_w(model, n) for n in group])
            total += _column_scores(W, stats[group[0]], criterion)
    return total


def head_dim_scores(model: Model, blk: BlockMap, criterion: str, stats=None) -> tuple[torch.Tensor, torch.Tensor]:
    """([heads, head_dim] for query/key dimensions, same for value dimensions). A q/k dimension d
    adds q_d k_d to the logits: scored by the product of the two rows' norms, each row weighted by
    the input channels' activation norms (a Wanda-style estimate of the output norm) unless the
    criterion is magnitude. A value dimension: its v row (weighted likewise) times its o column."""
    a = blk.attn
    q, k, v = _qkv_rows(blk, model)
    s = stats[a.inputs[0]].norms if criterion != "magnitude" and stats else torch.ones(q.shape[-1])
    per = a.n_heads // a.n_kv_heads
    k, v = k.repeat_interleave(per, 0), v.repeat_interleave(per, 0)
    qk = (q * s).norm(dim=-1) * (k * s).norm(dim=-1)
    o_cols = _w(model, a.o).norm(dim=0).view(a.n_heads, a.head_dim)
    return qk, (v * s).norm(dim=-1) * o_cols
