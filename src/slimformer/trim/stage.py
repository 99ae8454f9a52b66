"""The `trim` stage: score structures, cut the least important, keep the model consistent.

Order inside the stage: whole blocks first (scored on the full model), then KV groups, query
heads and FFN neurons (scored on one calibration pass over the remaining blocks), then hidden
channels, then low-rank factorisation. Amounts are per block for heads / kv_heads / ffn and in
total for layers / hidden: a number below 1 is a fraction to remove, 1 or more a count.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch

from ..data.calibration import calibration_set
from ..engine import run_sequential
from ..errors import ConfigValueError
from ..model import BlockMap, Model, get_module, set_module
from ..model.shapes import config_mismatches, uniform
from ..stages import register_stage
from . import scores as S
from .layers import block_influence, choose_by_loss
from .lowrank import factorize, worth_factoring
from .objective import targets as loss_targets
from .surgery import drop_blocks, refresh, trim_ffn, trim_heads, trim_hidden
from .taylor import taylor_scores

LAYER_SCORES = ("block_influence", "loss")
ALLOCATIONS = ("uniform", "global")
LOWRANK_METHODS = ("svd", "asvd")


@dataclass
class TrimConfig:
    score: str = "fluctuation"  # heads / ffn / hidden: magnitude | activation | fluctuation | taylor
    heads: float = 0.0  # query heads removed per block (fraction < 1, or count); GQA: evenly per KV group
    kv_heads: float = 0.0  # KV groups (a KV head and its query heads) removed per block
    ffn: float = 0.0  # FFN neurons removed per block
    layers: float = 0.0  # whole blocks removed
    hidden: float = 0.0  # hidden (residual-stream) channels removed
    params: float | None = None  # final size: fraction of the parameters kept, by equal head / FFN fractions
    layer_score: str = "block_influence"  # block_influence | loss (greedy, measured)
    layer_candidates: int = 0  # loss: measure only the N lowest-influence blocks per round (0: all)
    allocation: str = "uniform"  # uniform: the same count in every block; global: counts follow scores
    bias_compensation: bool = True  # FLAP: removed channels' mean output moves into the bias
    grad_samples: int = 16  # calibration samples (batches for encoders) for taylor and loss
    lowrank: dict = field(default_factory=dict)  # {regex of linear names: rank (fraction of min(in, out) or count)}
    lowrank_method: str = "asvd"  # svd | asvd (activation-aware, whitened by the inputs' Gram matrix)

    def validate(self) -> None:
        if self.score not in S.CRITERIA:
            raise ConfigValueError(f"trim score {self.score!r} unknown; scores: {', '.join(S.CRITERIA)}")
        if self.layer_score not in LAYER_SCORES:
            raise ConfigValueError(f"trim layer_score {self.layer_score!r} unknown; use {' or '.join(LAYER_SCORES)}")
        if self.allocation not in ALLOCATIONS:
            raise ConfigValueError(f"trim allocation {self.allocation!r} unknown; use {' or '.join(ALLOCATIONS)}")
        if self.lowrank_method not in LOWRANK_METHODS:
            raise ConfigValueError(f"trim lowrank_method must be svd or asvd (got {self.lowrank_method!r})")
        for name in ("heads", "kv_heads", "ffn", "layers", "hidden"):
            _check_amount(name, getattr(self, name))
        for rx, rank in self.lowrank.items():
            _check_amount(f"lowrank rank for {rx!r}", rank)
            try:
                re.compile(rx)
            except re.error as e:
                raise ConfigValueError(f"trim lowrank regex {rx!r} is invalid ({e})") from None
        if self.params is not None:
            if not 0.0 < self.params < 1.0:
                raise ConfigValueError(f"trim params is the fraction of parameters kept, in (0, 1) (got {self.params})")
            if self.heads or self.ffn or self.hidden:
                raise ConfigValueError("trim params sets the head and FFN fractions itself; drop heads / ffn / hidden")
        if self.grad_samples < 1 or self.layer_candidates < 0:
            raise ConfigValueError("trim grad_samples must be >= 1 and layer_candidates >= 0")
        if not self.active:
            raise ConfigValueError("trim removes nothing; set heads, kv_heads, ffn, layers, hidden, params or lowrank")

    @property
    def active(self) -> bool:
        return bool(self.heads or self.kv_heads or self.ffn or self.layers or self.hidden or self.params
                    or self.lowrank)


def _check_amount(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or \
            (value >= 1 and value != int(value)):
        raise ConfigValueError(f"trim {name} must be a fraction in [0, 1) or a whole count (got {value!r})")


def amount(value: float, total: int, what: str, keep_at_least: int = 1) -> int:
    """How many of `total` to remove: a fraction (rounded) or a count."""
    n = int(round(value * total)) if value < 1 else int(value)
    if n > total - keep_at_least:
        raise ConfigValueError(f"cannot remove {n} of {total} {what}; at least {keep_at_least} must stay")
    return n


def _lowest(score: torch.Tensor, n: int) -> list[int]:
    return torch.argsort(score, stable=True)[:n].tolist()


def trim_model(model: Model, cfg: TrimConfig, calibration: dict | None = None, original: Model | None = None,
               progress: bool = True) -> dict:
    """Trim `model` in place. Returns the stage log."""
    cfg.validate()
    for name in model.arch.linears:
        if type(get_module(model.module, name)) is not torch.nn.Linear:
            raise ConfigValueError(f"{name} is a {type(get_module(model.module, name)).__name__}, not a dense "
                                   "Linear; put trim before prune / quantize stages in the recipe, and at most one "
                                   "trim with lowrank, last")
    before = _params(model)
    log: dict = {"score": cfg.score, "allocation": cfg.allocation}
    needs_data = cfg.layers or cfg.score != "magnitude" or cfg.bias_compensation or \
        (cfg.lowrank and cfg.lowrank_method == "asvd")
    calib = calibration_set(model, **(calibration or {})) if needs_data else None
    if calib is not None:
        log["calibration"] = calib.describe()
    grad_batches = calib.batches[:cfg.grad_samples] if calib is not None else []
    reference = original or model
    if cfg.layers:
        log["layers"] = _trim_layers(model, cfg, calib, grad_batches, reference, progress)
    if cfg.params is not None:
        frac = _fraction_for_params(model, cfg, before)
        cfg = _with(cfg, heads=frac, ffn=frac)
        log["params_fraction_removed"] = round(frac, 4)
    if cfg.heads or cfg.kv_heads or cfg.ffn or cfg.hidden:
        log.update(_trim_width(model, cfg, calib, grad_batches, reference, progress))
    if cfg.lowrank:
        log["lowrank"] = _lowrank(model, cfg, calib, progress)
    after = _params(model)
    mismatches = config_mismatches(model)
    log.update({"params_before": before, "params_after": after, "params_ratio": after / before,
                "uniform": uniform(model), "standard": not mismatches, "nonstandard": mismatches[:5],
                "blocks": [{"heads": b.attn.n_heads, "kv_heads": b.attn.n_kv_heads, "ffn": b.ffn.width}
                           for b in model.arch.blocks]})
    return log


def _with(cfg: TrimConfig, **kw) -> TrimConfig:
    import dataclasses
    return dataclasses.replace(cfg, **kw)


def _params(model: Model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.module.parameters()}.values())


def _trim_layers(model: Model, cfg: TrimConfig, calib, grad_batches, reference, progress) -> dict:
    n = amount(cfg.layers, model.arch.n_layers, "blocks")
    influence = block_influence(model, calib.batches)
    entry: dict = {"score": cfg.layer_score, "block_influence": [round(float(v), 5) for v in influence]}
    if cfg.layer_score == "block_influence":
        drop = _lowest(influence, n)
    else:
        targets = loss_targets(model, reference, grad_batches)
        drop, rounds = choose_by_loss(model, n, grad_batches, targets, influence, cfg.layer_candidates, progress)
        entry["rounds"] = rounds
    drop_blocks(model, drop)
    refresh(model)
    entry["dropped"] = sorted(drop)
    return entry


def _per_head_params(blk: BlockMap, model: Model) -> int:
    a = blk.attn
    o = get_module(model.module, a.o)
    n = a.head_dim * (2 * o.out_features if a.n_kv_heads < a.n_heads else 4 * o.out_features)
    return n + a.head_dim * (1 if a.n_kv_heads < a.n_heads else 3) * int(o.bias is not None)


def _fraction_for_params(model: Model, cfg: TrimConfig, before: int) -> float:
    """The fraction of heads and FFN neurons whose removal leaves cfg.params of `before` (bisection)."""
    now = _params(model)
    per_block = []
    for blk in model.arch.blocks:
        up = get_module(model.module, blk.ffn.up)
        per_neuron = up.in_features * (3 if blk.ffn.gated else 2) + (1 if up.bias is not None else 0) * (2 if blk.ffn.gated else 1)
        per_block.append((blk, per_neuron))

    def removed(frac: float) -> int:
        total = 0
        for blk, per_neuron in per_block:
            a = blk.attn
            per = a.n_heads // a.n_kv_heads
            heads = a.n_kv_heads * round(frac * per) if per > 1 else round(frac * a.n_heads)
            total += heads * _per_head_params(blk, model) + round(frac * blk.ffn.width) * per_neuron
        return total

    goal = now - cfg.params * before
    if goal <= 0:
        return 0.0
    if removed(0.95) < goal:
        raise ConfigValueError(f"params {cfg.params} is out of reach by trimming heads and FFN neurons "
                               "(embeddings and norms stay); ask for a larger fraction or add layers / hidden")
    lo, hi = 0.0, 0.95
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if removed(mid) < goal else (lo, mid)
    return hi


def _trim_width(model: Model, cfg: TrimConfig, calib, grad_batches, reference, progress) -> dict:
    """KV groups, query heads, FFN neurons and hidden channels, from one set of statistics."""
    stats: dict = {}
    want = S.STATS_FOR.get(cfg.score, set()) | ({"norms", "mean"} if cfg.bias_compensation else set())
    if want:
        def keep_stats(model, blk, block_stats):
            stats.update(block_stats)
            return {}
        run_sequential(model, calib, keep_stats, want, progress=progress, desc="trim statistics")
    taylor = None
    if cfg.score == "taylor":
        taylor = taylor_scores(model, grad_batches, loss_targets(model, reference, grad_batches),
                               hidden=bool(cfg.hidden))
    log: dict = {}
    compensate = cfg.bias_compensation and bool(stats)
    if cfg.kv_heads or cfg.heads:
        log["heads"] = _cut_heads(model, cfg, stats, taylor, compensate)
    if cfg.ffn:
        log["ffn"] = _cut_ffn(model, cfg, stats, taylor, compensate)
    if cfg.hidden:
        n = amount(cfg.hidden, model.arch.hidden_size, "hidden channels")
        score = S.hidden_scores(model, cfg.score, stats, taylor)
        keep = sorted(set(range(model.arch.hidden_size)) - set(_lowest(score, n)))
        trim_hidden(model, keep)
        refresh(model)
        log["hidden"] = {"removed": n, "hidden_size": model.arch.hidden_size}
    return log


def _compensation(model, reader, stats, removed_channels, compensate):
    # Only into an existing bias: adding one where the family has none (Llama) would make the
    # config unable to describe the model.
    if not compensate or not len(removed_channels) or get_module(model.module, reader).bias is None:
        return None
    return S.bias_compensation(model, reader, stats, torch.as_tensor(removed_channels, dtype=torch.long))


def _global_counts(scores: list[torch.Tensor], total_remove: int, keep_at_least: int = 1) -> list[int]:
    """Per-block removal counts from scores normalised by each block's mean (global allocation)."""
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


def _cut_heads(model: Model, cfg: TrimConfig, stats, taylor, compensate) -> dict:
    blocks = model.arch.blocks
    per_block = [S.head_scores(model, blk, cfg.score, stats, taylor) for blk in blocks]
    gqa = blocks[0].attn.n_kv_heads < blocks[0].attn.n_heads
    if cfg.allocation == "global" and gqa:
        raise ConfigValueError("global allocation of heads is for multi-head attention; with GQA use "
                               "allocation: uniform (heads are removed evenly per KV group)")
    counts = None
    if cfg.allocation == "global":
        total = sum(amount(cfg.heads, b.attn.n_heads, "heads") for b in blocks)
        counts = _global_counts(per_block, total)
    removed = []
    for i, (blk, score) in enumerate(zip(blocks, per_block)):
        a = blk.attn
        per = a.n_heads // a.n_kv_heads
        groups = list(range(a.n_kv_heads))
        if cfg.kv_heads:
            gone = set(_lowest(S.kv_scores(blk, score), amount(cfg.kv_heads, a.n_kv_heads, "KV groups")))
            groups = [g for g in groups if g not in gone]
        if per > 1:  # GQA: the same number of query heads leaves every kept group
            n_q = amount(cfg.heads, per, "query heads per KV group") if cfg.heads else 0
            keep = []
            for g in groups:
                members = list(range(g * per, (g + 1) * per))
                drop = set(members[j] for j in _lowest(score[members], n_q))
                keep += [h for h in members if h not in drop]
        else:
            n = counts[i] if counts is not None else (amount(cfg.heads, a.n_heads, "heads") if cfg.heads else 0)
            keep = sorted(set(groups) - set(_lowest(score[groups], n)))
        gone_heads = sorted(set(range(a.n_heads)) - set(keep))
        channels = S.head_channels(blk, gone_heads)
        trim_heads(model, blk, keep, _compensation(model, a.o, stats, channels, compensate))
        removed.append(len(gone_heads))
    refresh(model)
    return {"removed_per_block": removed}


def _cut_ffn(model: Model, cfg: TrimConfig, stats, taylor, compensate) -> dict:
    blocks = model.arch.blocks
    per_block = [S.ffn_scores(model, blk, cfg.score, stats, taylor) for blk in blocks]
    if cfg.allocation == "global":
        counts = _global_counts(per_block, sum(amount(cfg.ffn, b.ffn.width, "FFN neurons") for b in blocks))
    else:
        counts = [amount(cfg.ffn, b.ffn.width, "FFN neurons") for b in blocks]
    for blk, score, n in zip(blocks, per_block, counts):
        gone = _lowest(score, n)
        keep = sorted(set(range(blk.ffn.width)) - set(gone))
        trim_ffn(model, blk, keep, _compensation(model, blk.ffn.down, stats, gone, compensate))
    refresh(model)
    return {"removed_per_block": counts}


def _lowrank(model: Model, cfg: TrimConfig, calib, progress) -> dict:
    chosen = {n: rank for blk in model.arch.blocks for n in blk.linears
              for rx, rank in cfg.lowrank.items() if re.search(rx, n)}
    if not chosen:
        raise ConfigValueError(f"trim lowrank: no linear matches {list(cfg.lowrank)}; linears look like "
                               f"{model.arch.blocks[0].linears[0]!r}")
    done, skipped = {}, {}

    def factor(model, blk, block_stats):
        for name in blk.linears:
            if name not in chosen:
                continue
            lin = get_module(model.module, name)
            full = min(lin.in_features, lin.out_features)
            rank = max(1, int(round(chosen[name] * full)) if chosen[name] < 1 else int(chosen[name]))
            if not worth_factoring(lin.in_features, lin.out_features, rank):
                skipped[name] = f"rank {rank} would not save time on {lin.out_features}x{lin.in_features}"
                continue
            gram = block_stats[name].xtx if block_stats else None
            set_module(model.module, name, factorize(lin, rank, gram))
            done[name] = rank
        return {}

    if cfg.lowrank_method == "asvd":
        run_sequential(model, calib, factor, {"hessian"}, select=lambda b: [n for n in b.linears if n in chosen],
                       progress=progress, desc="low-rank (activation-aware)")
    else:
        for blk in model.arch.blocks:
            factor(model, blk, None)
    return {"method": cfg.lowrank_method, "ranks": done, "skipped": skipped}


@register_stage("trim", TrimConfig, doc="remove attention heads (GQA-aware), FFN neurons, blocks, hidden "
                "channels, or factor linears to low rank: smaller dense matrices")
def run(model: Model, cfg: TrimConfig, ctx) -> tuple[Model, dict]:
    log = trim_model(model, cfg, ctx.calibration_kwargs(), original=ctx.original, progress=ctx.progress)
    return model, log
