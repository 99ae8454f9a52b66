"""The `prune` stage: score, mask and (SparseGPT) update every selected linear of every block."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from ..data.calibration import calibration_set
from ..engine import block_scope, run_sequential
from ..engine.hessian import inverse_cholesky
from ..errors import ConfigValueError
from ..model import BlockMap, Model, get_module
from ..stages import StageLog, register_stage
from .masks import parse_pattern
from .methods import magnitude_mask, sparsegpt_solve, wanda_mask
from .owl import outlier_ratio, owl_sparsities

METHODS = ("magnitude", "wanda", "sparsegpt")
ALLOCATIONS = ("uniform", "owl")


@dataclass
class PruneConfig:
    method: str = "wanda"  # magnitude | wanda | sparsegpt
    sparsity: float = 0.5  # fraction of weights zeroed; an N:M pattern sets it to 1 - N/M
    pattern: str = "unstructured"  # or "N:M", e.g. "2:4", "4:8" (along the input dimension)
    allocation: str = "uniform"  # uniform | owl (outlier-weighted layer sparsity)
    owl_lambda: float = 0.08
    owl_threshold: float = 5.0
    targets: dict = field(default_factory=dict)  # {regex: sparsity} overrides for matching linears
    ignore: list = field(default_factory=list)  # regexes of linears to leave dense
    damp: float = 0.01  # SparseGPT Hessian dampening, fraction of the mean diagonal
    blocksize: int = 128  # SparseGPT column block

    def validate(self) -> tuple[int, int] | None:
        if self.method not in METHODS:
            raise ConfigValueError(f"prune method {self.method!r} unknown; methods: {', '.join(METHODS)}")
        if self.allocation not in ALLOCATIONS:
            raise ConfigValueError(f"prune allocation {self.allocation!r} unknown; use {' or '.join(ALLOCATIONS)}")
        nm = parse_pattern(self.pattern)
        if nm and self.allocation == "owl":
            raise ConfigValueError("OWL allocates unstructured sparsity per layer; use pattern: unstructured")
        for name, s in [("sparsity", self.sparsity)] + list(self.targets.items()):
            if not isinstance(s, (int, float)) or not 0.0 <= s < 1.0:
                raise ConfigValueError(f"prune {name} must be in [0, 1) (got {s!r})")
        for rx in list(self.targets) + list(self.ignore):
            try:
                re.compile(rx)
            except re.error as e:
                raise ConfigValueError(f"prune regex {rx!r} is invalid ({e})") from None
        if self.damp <= 0 or self.blocksize < 1:
            raise ConfigValueError("prune damp must be > 0 and blocksize >= 1")
        return nm


@dataclass(kw_only=True)
class PruneLog(StageLog):
    """What a prune did: the method, the sparsity asked for and reached."""
    method: str
    pattern: str
    target_sparsity: float
    allocation: str
    sparsity_of_block_linears: float = 0.0  # zeros / weights over every block linear (ignored ones count dense)
    # per-layer / per-block detail (results.json; the report shows min / median / max)
    per_layer: dict[str, float] = field(default_factory=dict)  # {linear: sparsity}
    owl_block_sparsity: list[float] | None = None  # allocation owl: the sparsity given to each block
    hessian_notes: list[str] | None = None  # SparseGPT: layers whose Hessian needed more damping

    DETAIL = ("per_layer", "owl_block_sparsity", "hessian_notes")


def _selected(cfg: PruneConfig, blk: BlockMap) -> list[str]:
    return [n for n in blk.linears if not any(re.search(rx, n) for rx in cfg.ignore)]


def _sparsity_for(cfg: PruneConfig, name: str, block_sparsity: float) -> float:
    for rx, s in cfg.targets.items():
        if re.search(rx, name):
            return float(s)
    return block_sparsity


def prune_model(model: Model, cfg: PruneConfig, calibration: dict | None = None,
                progress: bool = True) -> PruneLog:
    """Prune `model` in place; masks are kept on model.masks. Returns the stage log."""
    nm = cfg.validate()
    target = 1.0 - nm[0] / nm[1] if nm else float(cfg.sparsity)
    blocks = model.arch.blocks
    block_sparsity = [target] * len(blocks)
    log = PruneLog(stage="prune", method=cfg.method, pattern=cfg.pattern, target_sparsity=target,
                   allocation=cfg.allocation)
    calib = None
    if cfg.method != "magnitude" or cfg.allocation == "owl":
        calib = calibration_set(model, **(calibration or {}))
        log.calibration = calib.describe()
    if cfg.allocation == "owl":
        block_sparsity = _owl(model, cfg, calib, target, progress)
        log.owl_block_sparsity = [round(s, 4) for s in block_sparsity]
    per_layer: dict[str, float] = {}
    hessian_notes: list[str] = []

    def prune_block(model: Model, blk: BlockMap, stats) -> dict:
        names = _selected(cfg, blk)
        # q/k/v (gate/up) share one statistics object: its last reader takes the Hessian buffer
        last_reader = {id(stats[n]): n for n in names} if stats else {}
        for name in names:
            lin = get_module(model.module, name)
            W = lin.weight.data
            s = _sparsity_for(cfg, name, block_sparsity[blk.index])
            if cfg.method == "magnitude":
                keep = magnitude_mask(W, s, nm)
                new = W * keep
            elif cfg.method == "wanda":
                keep = wanda_mask(W, stats[name].norms, s, nm)
                new = W * keep
            else:
                new = W.detach().clone().float()
                # H goes in as a temporary and is freed when the factor is out: the solve runs
                # with U and W only (at 1536 inputs H, its factor, inverse and copy were 72 MiB)
                release = last_reader[id(stats[name])] == name
                U, info = inverse_cholesky(stats[name].hessian(torch.float64, release=release), new,
                                           cfg.damp, overwrite=True)
                keep = sparsegpt_solve(new, U, s, nm, cfg.blocksize)
                del U
                if info.retries or info.dead_channels:
                    hessian_notes.append(f"{name}: damp {info.damp:g} after {info.retries} retries, "
                                         f"{info.dead_channels} dead input channels")
            W.copy_(new.to(W.dtype))
            model.masks[name] = keep
            per_layer[name] = 1.0 - keep.float().mean().item()
        return {}

    if cfg.method == "magnitude":
        for blk in blocks:
            with block_scope(model, blk):
                prune_block(model, blk, None)
    else:
        want = {"hessian"} if cfg.method == "sparsegpt" else {"norms"}
        run_sequential(model, calib, prune_block, want, select=lambda b: _selected(cfg, b),
                       progress=progress, desc=f"prune {cfg.method}")
    zeros = sum(per_layer[n] * get_module(model.module, n).weight.numel() for n in per_layer)
    total = sum(get_module(model.module, n).weight.numel() for n in model.arch.linears)
    log.sparsity_of_block_linears = zeros / total
    log.per_layer = {n: round(v, 4) for n, v in per_layer.items()}
    log.hessian_notes = hessian_notes or None
    return log


def _owl(model: Model, cfg: PruneConfig, calib, target: float, progress: bool) -> list[float]:
    """One dense pass collecting each block's outlier ratio, then the OWL allocation."""
    lod: list[float] = []

    def measure(model: Model, blk: BlockMap, stats) -> dict:
        names = _selected(cfg, blk)
        lod.append(outlier_ratio([get_module(model.module, n).weight.data for n in names],
                                 [stats[n].norms for n in names], cfg.owl_threshold))
        return {}

    run_sequential(model, calib, measure, {"norms"}, select=lambda b: _selected(cfg, b),
                   progress=progress, desc="OWL outliers", rewrites=False)
    return owl_sparsities(lod, target, cfg.owl_lambda)


@register_stage("prune", PruneConfig, doc="zero individual weights: magnitude, Wanda, SparseGPT; "
                "unstructured or N:M; uniform or OWL per-layer sparsity", streams=True)
def run(model: Model, cfg: PruneConfig, ctx) -> tuple[Model, PruneLog]:
    log = prune_model(model, cfg, ctx.calibration_kwargs(), progress=ctx.progress)
    return model, log
