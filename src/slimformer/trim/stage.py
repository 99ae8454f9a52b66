"""The `trim` stage: score structures, cut the least important, keep the model consistent.

Order inside the stage: whole blocks first (scored on the full model), then KV groups, query
heads and FFN neurons (scored on one calibration pass over the remaining blocks), then hidden
channels, then low-rank factorisation. Amounts are per block for heads / kv_heads / ffn and in
total for layers / hidden: a number below 1 is a fraction to remove, 1 or more a count.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

import torch

from ..model.info import param_count
from ..data.calibration import calibration_set
from ..engine import run_sequential
from ..errors import ConfigValueError
from ..model import BlockMap, Model, get_module, set_module
from ..model.shapes import config_mismatches, uniform
from ..stages import StageLog, register_stage
from . import scores as S
from .layers import block_influence, choose_by_loss
from .lowrank import factorize, worth_factoring
from .objective import targets as loss_targets
from .reconstruct import UPDATES
from .surgery import drop_blocks, refresh
from .taylor import taylor_scores
from .width import amount, check_hidden, lowest, trim_width

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
    compensate: str = "reconstruct"  # reconstruct (least-squares refit of o / down) | bias (FLAP) | none
    damp: float = 0.01  # reconstruct: dampening, fraction of the Gram matrix's mean diagonal
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
        if self.compensate not in UPDATES:
            raise ConfigValueError(f"trim compensate must be one of {', '.join(UPDATES)} (got {self.compensate!r})")
        if self.damp <= 0:
            raise ConfigValueError(f"trim damp must be > 0 (got {self.damp})")
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


@dataclass(kw_only=True)
class TrimLog(StageLog):
    """What a trim removed, and the shapes it left."""
    score: str
    allocation: str
    layer_score: str | None = None  # layers: block_influence | loss
    layers_dropped: list[int] | None = None  # indices of the removed blocks (in the model as it came)
    params_fraction_removed: float | None = None  # params: the head / FFN fraction that reaches it
    heads_removed_per_block: list[int] | None = None
    ffn_removed_per_block: list[int] | None = None
    hidden: dict | None = None  # {"removed", "hidden_size"} (+ "head_dim" when heads shrank with it)
    lowrank_method: str | None = None
    params_before: int = 0
    params_after: int = 0
    params_ratio: float = 1.0
    uniform: bool = True  # every block has the same shapes
    standard: bool = True  # the model's config describes it (plain transformers loads it)
    nonstandard: list[str] = field(default_factory=list)  # the first mismatches, when not standard
    # per-block / per-layer detail (results.json; the report shows a table or a summary)
    block_influence: list[float] | None = None  # layers: each block's score before any was removed
    layer_rounds: list | None = None  # layer_score loss: what each greedy round measured
    lowrank_ranks: dict | None = None  # {linear: rank}
    lowrank_skipped: dict | None = None  # {linear: why it stayed dense}
    blocks: list[dict] = field(default_factory=list)  # {"heads", "kv_heads", "ffn"} per block, after

    DETAIL = ("block_influence", "layer_rounds", "lowrank_ranks", "lowrank_skipped", "blocks")


def _check_amount(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or \
            (value >= 1 and value != int(value)):
        raise ConfigValueError(f"trim {name} must be a fraction in [0, 1) or a whole count (got {value!r})")


def trim_model(model: Model, cfg: TrimConfig, calibration: dict | None = None, original: Model | None = None,
               progress: bool = True) -> TrimLog:
    """Trim `model` in place. Returns the stage log."""
    cfg.validate()
    shared = model.arch.relative_bias is not None and model.arch.relative_bias.shared
    if shared and (cfg.heads or cfg.kv_heads or cfg.params is not None):
        # one [buckets, heads] table adds every head's bias in every block (MPNet): a block whose
        # heads differ from the table's would not run, so heads stay; widths and blocks can go
        raise ConfigValueError(f"{model.arch.model_type} shares one relative position bias across blocks, so its "
                               "heads cannot be trimmed per block; trim ffn, layers or hidden instead")
    check_hidden(model, cfg)
    for name in model.arch.linears:
        mod = get_module(model.module, name)
        if type(mod) is not torch.nn.Linear:
            raise ConfigValueError(f"{name} is a {type(mod).__name__}, not a dense "
                                   "Linear; put trim before prune and quantize in the recipe, and low-rank "
                                   "factorisation in the last trim")
    before = param_count(model)
    log = TrimLog(stage="trim", score=cfg.score, allocation=cfg.allocation)
    needs_data = cfg.layers or cfg.score != "magnitude" or cfg.compensate != "none" or \
        (cfg.lowrank and cfg.lowrank_method == "asvd")
    calib = calibration_set(model, **(calibration or {})) if needs_data else None
    if calib is not None:
        log.calibration = calib.describe()
    grad_batches = calib.batches[:cfg.grad_samples] if calib is not None else []
    reference = original or model
    if cfg.layers:
        _trim_layers(model, cfg, calib, grad_batches, reference, progress, log)
    if cfg.params is not None:
        frac = _fraction_for_params(model, cfg, before)
        cfg = dataclasses.replace(cfg, heads=frac, ffn=frac)
        log.params_fraction_removed = round(frac, 4)
    if cfg.heads or cfg.kv_heads or cfg.ffn or cfg.hidden:
        taylor = None
        if cfg.score == "taylor":
            taylor = taylor_scores(model, grad_batches, loss_targets(model, reference, grad_batches),
                                   hidden=bool(cfg.hidden))
        cut = trim_width(model, cfg, calib, taylor, progress)
        log.heads_removed_per_block, log.ffn_removed_per_block, log.hidden = cut.heads, cut.ffn, cut.hidden
    if cfg.lowrank:
        log.lowrank_method = cfg.lowrank_method
        log.lowrank_ranks, log.lowrank_skipped = _lowrank(model, cfg, calib, progress)
    after = param_count(model)
    mismatches = config_mismatches(model)
    log.params_before, log.params_after, log.params_ratio = before, after, after / before
    log.uniform, log.standard, log.nonstandard = uniform(model), not mismatches, mismatches[:5]
    log.blocks = [{"heads": b.attn.n_heads, "kv_heads": b.attn.n_kv_heads, "ffn": b.ffn.width}
                  for b in model.arch.blocks]
    return log


def _trim_layers(model: Model, cfg: TrimConfig, calib, grad_batches, reference, progress, log: TrimLog) -> None:
    n = amount(cfg.layers, model.arch.n_layers, "blocks")
    influence = block_influence(model, calib.batches)
    log.layer_score = cfg.layer_score
    log.block_influence = [round(float(v), 5) for v in influence]
    if cfg.layer_score == "block_influence":
        drop = lowest(influence, n)
    else:
        targets = loss_targets(model, reference, grad_batches)
        drop, log.layer_rounds = choose_by_loss(model, n, grad_batches, targets, influence, cfg.layer_candidates,
                                                progress)
    drop_blocks(model, drop)
    refresh(model)
    log.layers_dropped = sorted(drop)


def _per_head_params(blk: BlockMap, model: Model) -> int:
    a = blk.attn
    o = get_module(model.module, a.o)
    n = a.head_dim * (2 * o.out_features if a.n_kv_heads < a.n_heads else 4 * o.out_features)
    return n + a.head_dim * (1 if a.n_kv_heads < a.n_heads else 3) * int(o.bias is not None)


def _fraction_for_params(model: Model, cfg: TrimConfig, before: int) -> float:
    """The fraction of heads and FFN neurons whose removal leaves cfg.params of `before` (bisection)."""
    now = param_count(model)
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


def _lowrank(model: Model, cfg: TrimConfig, calib, progress) -> tuple[dict, dict]:
    """Factor the chosen linears; returns ({linear: rank}, {linear: why it stayed dense})."""
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
    return done, skipped


@register_stage("trim", TrimConfig, doc="remove attention heads (GQA-aware), FFN neurons, blocks, hidden "
                "channels, or factor linears to low rank: smaller dense matrices")
def run(model: Model, cfg: TrimConfig, ctx) -> tuple[Model, TrimLog]:
    log = trim_model(model, cfg, ctx.calibration_kwargs(), original=ctx.original, progress=ctx.progress)
    return model, log
