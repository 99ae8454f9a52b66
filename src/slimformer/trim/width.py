"""Narrower blocks: KV groups, query heads and FFN neurons, then hidden channels.

Heads and neurons are cut block by block inside the sequential engine: each block is scored on
inputs that already went through the trimmed blocks before it, its readers (o, down) are refitted
to their original outputs (reconstruct.py), and the trimmed block's outputs feed the next one.
With `allocation: global`, per-block counts come from a first pass that scores every block (scores
normalised by each block's mean, then ranked together); the cut pass then follows those counts.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine import run_sequential
from ..errors import ConfigValueError
from ..model import BlockMap, Model, get_module
from . import scores as S
from .reconstruct import mean_into_bias, refit
from ..model.families import family
from ..model.sentence_head import narrow_inputs
from .surgery import head_rows, refresh, trim_ffn, trim_head_dims, trim_heads, trim_hidden


def amount(value: float, total: int, what: str, keep_at_least: int = 1) -> int:
    """How many of `total` to remove: a fraction (rounded) or a count."""
    n = int(round(value * total)) if value < 1 else int(value)
    if n > total - keep_at_least:
        raise ConfigValueError(f"cannot remove {n} of {total} {what}; at least {keep_at_least} must stay")
    return n


def lowest(score: torch.Tensor, n: int) -> list[int]:
    return torch.argsort(score, stable=True)[:n].tolist()


def _global_counts(scores: list[torch.Tensor], total_remove: int, keep_at_least: int = 1) -> list[int]:
    flat = torch.cat([s / s.mean().clamp_min(1e-12) for s in scores])
    owner = torch.cat([torch.full((len(s),), i) for i, s in enumerate(scores)])
    counts = [0] * len(scores)
    for idx in torch.argsort(flat, stable=True).tolist():
        if total_remove == 0:
            break
        b = int(owner[idx])
        if counts[b] < len(scores[b]) - keep_at_least:
            counts[b] += 1
            total_remove -= 1
    return counts


def _update(model: Model, reader: str, stats, keep: torch.Tensor, removed: torch.Tensor, cfg):
    """New (W, b) for the reader's kept columns, or None to just slice."""
    if cfg.compensate == "none" or stats is None or not len(removed):
        return None
    lin = get_module(model.module, reader)
    st = stats[reader]
    if cfg.compensate == "reconstruct":
        return refit(lin.weight.data, lin.bias.data if lin.bias is not None else None, st.xtx, st.sum, st.n,
                     keep, cfg.damp)
    if lin.bias is None:  # adding a bias the family has none of would break its config
        return None
    return lin.weight.data[:, keep], mean_into_bias(lin.weight.data, lin.bias.data, st.mean, removed)


def _keep_heads(blk: BlockMap, score: torch.Tensor, cfg, n_heads_out: int | None) -> list[int]:
    a = blk.attn
    per = a.n_heads // a.n_kv_heads
    groups = list(range(a.n_kv_heads))
    if cfg.kv_heads:
        gone = set(lowest(S.kv_scores(blk, score), amount(cfg.kv_heads, a.n_kv_heads, "KV groups")))
        groups = [g for g in groups if g not in gone]
    if per > 1:  # GQA: the same number of query heads leaves every kept group
        n_q = amount(cfg.heads, per, "query heads per KV group") if cfg.heads else 0
        keep = []
        for g in groups:
            members = list(range(g * per, (g + 1) * per))
            drop = {members[j] for j in lowest(score[members], n_q)}
            keep += [h for h in members if h not in drop]
        return keep
    n = n_heads_out if n_heads_out is not None else (amount(cfg.heads, a.n_heads, "heads") if cfg.heads else 0)
    return sorted(set(groups) - set(lowest(score[groups], n)))


def _stats_wanted(cfg) -> set[str]:
    want = set(S.STATS_FOR.get(cfg.score, set()))
    if not (cfg.heads or cfg.kv_heads or cfg.ffn):
        return want
    if cfg.compensate == "reconstruct":
        want |= {"hessian", "mean"}
    elif cfg.compensate == "bias":
        want |= {"mean"}
    return want


def _global_plan(model: Model, cfg, calib, taylor, progress) -> tuple[list | None, list | None]:
    if cfg.allocation != "global":
        return None, None
    blocks = model.arch.blocks
    if blocks[0].attn.n_kv_heads < blocks[0].attn.n_heads and cfg.heads:
        raise ConfigValueError("global allocation of heads is for multi-head attention; with GQA use "
                               "allocation: uniform (heads are removed evenly per KV group)")
    stats: dict = {}
    if cfg.score in S.STATS_FOR:
        run_sequential(model, calib, lambda m, b, s: stats.update(s) or {}, S.STATS_FOR[cfg.score],
                       progress=progress, desc="trim scores")
    heads = ffn = None
    if cfg.heads:
        scores = [S.head_scores(model, b, cfg.score, stats, taylor) for b in blocks]
        heads = _global_counts(scores, sum(amount(cfg.heads, b.attn.n_heads, "heads") for b in blocks))
    if cfg.ffn:
        scores = [S.ffn_scores(model, b, cfg.score, stats, taylor) for b in blocks]
        ffn = _global_counts(scores, sum(amount(cfg.ffn, b.ffn.width, "FFN neurons") for b in blocks))
    return heads, ffn


@dataclass
class WidthCut:
    """What trim_width removed: query heads and FFN neurons per block, hidden channels."""
    heads: list[int] | None = None
    ffn: list[int] | None = None
    hidden: dict | None = None  # {"removed", "hidden_size"} (+ "head_dim")


def trim_width(model: Model, cfg, calib, taylor: dict | None, progress: bool) -> WidthCut:
    head_counts, ffn_counts = _global_plan(model, cfg, calib, taylor, progress)
    hidden_stats: dict = {}
    removed_heads, removed_ffn = [], []

    def cut(model: Model, blk: BlockMap, stats) -> dict:
        if cfg.hidden:  # the hidden-channel score reads the residual-stream readers' statistics
            hidden_stats.update({g[0]: stats[g[0]] for g in S.hidden_readers(blk)} if stats else {})
        a = blk.attn
        if cfg.heads or cfg.kv_heads:
            score = S.head_scores(model, blk, cfg.score, stats, taylor)
            keep = _keep_heads(blk, score, cfg, head_counts[blk.index] if head_counts else None)
            gone = sorted(set(range(a.n_heads)) - set(keep))
            channels_kept = head_rows(keep, blk.attn.head_dim)
            trim_heads(model, blk, keep, _update(model, a.o, stats, channels_kept, head_rows(gone, blk.attn.head_dim), cfg))
            removed_heads.append(len(gone))
        if cfg.ffn:
            score = S.ffn_scores(model, blk, cfg.score, stats, taylor)
            n = ffn_counts[blk.index] if ffn_counts else amount(cfg.ffn, blk.ffn.width, "FFN neurons")
            gone = torch.tensor(sorted(lowest(score, n)), dtype=torch.long)
            keep = torch.tensor(sorted(set(range(blk.ffn.width)) - set(gone.tolist())), dtype=torch.long)
            trim_ffn(model, blk, keep.tolist(), _update(model, blk.ffn.down, stats, keep, gone, cfg))
            removed_ffn.append(n)
        for name in (a.o, blk.ffn.down):  # the big Gram matrices are done with
            if stats and name in stats:
                stats[name].xtx = None
        return {}

    want = _stats_wanted(cfg)
    if cfg.heads or cfg.kv_heads or cfg.ffn or (cfg.hidden and want):
        if want:
            run_sequential(model, calib, cut, want, progress=progress, desc="trim heads / FFN")
        else:
            for blk in model.arch.blocks:
                cut(model, blk, None)
        refresh(model)
    return WidthCut(heads=removed_heads or None, ffn=removed_ffn or None,
                    hidden=_cut_hidden(model, cfg, hidden_stats, taylor) if cfg.hidden else None)


def _head_dim_follows_hidden(arch) -> bool:
    """The config derives head_dim = hidden / heads (BERT, GPT-2, MPNet, ModernBERT)."""
    heads = {b.attn.n_heads for b in arch.blocks}
    return "head_dim" not in family(arch).config_keys and len(heads) == 1 and \
        all(b.attn.n_heads * b.attn.head_dim == arch.hidden_size for b in arch.blocks)


def check_hidden(model: Model, cfg) -> None:
    """Refuse, before anything changes, a hidden trim the model cannot take: where head_dim follows
    the hidden size every head loses dimensions with it, and under rotary positions a cut head
    dimension breaks its rotation pair and changes the frequencies of the pairs kept (the rotary
    tables are rebuilt for the new head_dim). Relative position biases (per head, MPNet) do not
    depend on the width, so MPNet's hidden trim goes ahead."""
    arch = model.arch
    if cfg.hidden and arch.rope is not None and _head_dim_follows_hidden(arch) and \
            amount(cfg.hidden, arch.hidden_size, "hidden channels"):
        raise ConfigValueError(f"{arch.model_type} derives head_dim from the hidden size and rotates head dimensions "
                               "in pairs (rotary positions), so hidden channels cannot be cut; trim heads, ffn or "
                               "layers instead")


def _cut_hidden(model: Model, cfg, stats: dict, taylor) -> dict:
    arch = model.arch
    n = amount(cfg.hidden, arch.hidden_size, "hidden channels")
    entry: dict = {}
    heads = {b.attn.n_heads for b in arch.blocks}
    if _head_dim_follows_hidden(arch):
        # BERT / GPT-2 configs derive head_dim = hidden / heads: shrink every head to match, so the
        # trimmed model keeps a standard config (the hidden size becomes a multiple of the heads).
        n_heads = heads.pop()
        new_hidden = (arch.hidden_size - n) // n_heads * n_heads
        if new_hidden < n_heads:
            raise ConfigValueError(f"removing {n} hidden channels leaves less than one per head ({n_heads} heads)")
        n, new_dim = arch.hidden_size - new_hidden, new_hidden // n_heads
        for blk in arch.blocks:
            qk, vo = S.head_dim_scores(model, blk, cfg.score, stats)
            top = lambda sc: torch.sort(torch.argsort(sc, dim=1, descending=True, stable=True)[:, :new_dim], dim=1).values
            trim_head_dims(model, blk, top(qk), top(vo))
        refresh(model)
        entry["head_dim"] = new_dim
    score = S.hidden_scores(model, cfg.score, stats, taylor)
    keep = sorted(set(range(model.arch.hidden_size)) - set(lowest(score, n)))
    trim_hidden(model, keep)
    # the sentence-transformers Dense after pooling reads the hidden channels too
    model.pooling.dense = narrow_inputs(model.pooling.dense, model.extra_files, torch.tensor(keep), len(keep))
    refresh(model)
    entry.update({"removed": n, "hidden_size": model.arch.hidden_size})
    return entry
