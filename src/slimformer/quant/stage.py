"""The `quantize` stage: (smooth,) quantize and swap in integer-kernel linears, block by block."""
from __future__ import annotations

import dataclasses
import re
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn

from ..data.calibration import calibration_set
from ..engine import run_sequential
from ..errors import ConfigValueError
from ..model import BlockMap, Model, get_module, set_module
from ..stages import register_stage
from .fusion import link_input_groups
from .methods import awq_scales, gptq, rtn, smoothquant_scales
from .modules import ACTIVATIONS, QuantLinear, real_kernel
from .spec import QuantSpec

METHODS = ("rtn", "gptq", "awq")
GROUPS = (0, 32, 64, 128, 256)


@dataclass
class QuantizeConfig:
    method: str = "rtn"  # rtn | gptq | awq
    bits: int = 8  # 8, 4 or 3
    group_size: int = 0  # 0: per output channel; else 32 / 64 / 128 / 256 input columns
    symmetric: bool = True
    full_range: bool = False  # int4 / int3 symmetric: use all 2^b levels (llama.cpp's Q4_0 scale rule)
    activations: str = "none"  # none (weight-only) | dynamic (int8, ranges per call) | static (calibrated)
    granularity: str = "auto"  # dynamic activations: a range per "token", or one per "tensor" (faster);
    # auto: per token for causal LMs (outlier tokens; decoding is one token anyway), per tensor for encoders

    smoothquant: float | None = None  # SmoothQuant migration strength alpha; None: no smoothing
    act_order: bool = False  # GPTQ: columns in order of decreasing Hessian diagonal
    damp: float = 0.01  # GPTQ Hessian dampening, fraction of the mean diagonal
    blocksize: int = 128  # GPTQ column block
    awq_grid: int = 20  # AWQ: alphas 0, 1/grid, ..., (grid-1)/grid
    lm_head: bool = False  # also quantize the LM head, if the model has one (RTN; unties tied embeddings)
    ignore: list = field(default_factory=list)  # regexes of block linears kept in full precision
    kernel: str = "auto"  # auto: the integer kernel for the format | simulated (research only)

    @property
    def spec(self) -> QuantSpec:
        return QuantSpec(int(self.bits), int(self.group_size), bool(self.symmetric), bool(self.full_range))

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigValueError(f"quantize method {self.method!r} unknown; methods: {', '.join(METHODS)}")
        if self.bits not in (3, 4, 8):
            raise ConfigValueError(f"quantize bits must be 8, 4 or 3 (got {self.bits!r})")
        if self.group_size not in GROUPS:
            raise ConfigValueError(f"quantize group_size must be one of {GROUPS} (0 = per channel); got {self.group_size!r}")
        if self.activations not in ACTIVATIONS:
            raise ConfigValueError(f"quantize activations {self.activations!r} unknown; use {', '.join(ACTIVATIONS)}")
        if self.activations != "none" and (self.bits != 8 or self.group_size or not self.symmetric):
            raise ConfigValueError("int8 activations need int8 symmetric per-channel weights: "
                                   "bits: 8, group_size: 0, symmetric: true")
        if self.full_range and (self.bits == 8 or not self.symmetric):
            raise ConfigValueError("quantize full_range is for int4 / int3 symmetric grids (bits: 4, symmetric: true)")
        if self.granularity not in ("auto", "token", "tensor"):
            raise ConfigValueError(f"quantize granularity must be auto, token or tensor (got {self.granularity!r})")
        if self.smoothquant is not None and not 0.0 <= float(self.smoothquant) <= 1.0:
            raise ConfigValueError(f"quantize smoothquant (alpha) must be in [0, 1] (got {self.smoothquant!r})")
        if self.smoothquant is not None and self.method == "awq":
            raise ConfigValueError("use either AWQ or SmoothQuant scaling, not both")
        if self.kernel not in ("auto", "simulated"):
            raise ConfigValueError(f"quantize kernel must be auto or simulated (got {self.kernel!r})")
        if self.damp <= 0 or self.blocksize < 1 or self.awq_grid < 1:
            raise ConfigValueError("quantize damp must be > 0, blocksize and awq_grid >= 1")
        for rx in self.ignore:
            try:
                re.compile(rx)
            except re.error as e:
                raise ConfigValueError(f"quantize ignore regex {rx!r} is invalid ({e})") from None

    def needs_calibration(self) -> bool:
        return self.method != "rtn" or self.smoothquant is not None or self.activations == "static"


def _selected(cfg: QuantizeConfig, blk: BlockMap) -> list[str]:
    return [n for n in blk.linears if not any(re.search(rx, n) for rx in cfg.ignore)]


def _fold_target(blk: BlockMap, group: list[str]) -> tuple[str, str] | None:
    """Where a per-input-channel scale of `group` can be folded: ("norm", name) or ("rows", name)
    of the op producing the group's input, when that output feeds nothing else."""
    attn, ffn = blk.attn, blk.ffn
    if group[0] in attn.inputs:
        return ("norm", blk.attn_norm) if blk.pre_norm else None
    if ffn.up in group:
        return ("norm", blk.ffn_norm) if blk.pre_norm else None
    if group == [attn.o] and attn.v and attn.n_kv_heads == attn.n_heads:
        return ("rows", attn.v)
    if group == [ffn.down] and ffn.gated:
        return ("rows", ffn.up)  # act(gate) * up: scaling up's rows scales down's input
    return None


@torch.no_grad()
def _fold(model: Model, target: tuple[str, str], s: torch.Tensor) -> None:
    """Divide the producer's output channels by s (the consumers' weights are multiplied by s)."""
    mod = get_module(model.module, target[1])
    if target[0] == "norm":
        mod.weight.div_(s.to(mod.weight.dtype))
        if getattr(mod, "bias", None) is not None:
            mod.bias.div_(s.to(mod.bias.dtype))
    else:
        mod.weight.div_(s.to(mod.weight.dtype)[:, None])
        if mod.bias is not None:
            mod.bias.div_(s.to(mod.bias.dtype))


def quantize_model(model: Model, cfg: QuantizeConfig, calibration: dict | None = None,
                   progress: bool = True) -> dict:
    """Quantize `model` in place (its linears become QuantLinear). Returns the stage log."""
    cfg.validate()
    if cfg.granularity == "auto":
        cfg = dataclasses.replace(cfg, granularity="token" if model.is_causal else "tensor")
    spec = cfg.spec
    log: dict = {"method": cfg.method, "format": spec.describe(), "activations": cfg.activations,
                 "granularity": cfg.granularity if cfg.activations == "dynamic" else None,
                 "smoothquant": cfg.smoothquant, "act_order": cfg.act_order}
    kernels: Counter = Counter()
    notes: list[str] = []
    scaling = {}  # group head -> alpha (AWQ) or "smoothquant"

    def make(name: str, lin: nn.Linear, W: torch.Tensor, stats, input_scale, act_absmax) -> None:
        if cfg.method == "gptq":
            H = stats.hessian()
            if input_scale is not None:  # the layer now sees x * input_scale
                H = H * input_scale[:, None] * input_scale[None, :]
            res = gptq(W, H, spec, cfg.blocksize, cfg.damp, cfg.act_order, model.masks.get(name))
            q, scales, zeros = res.q, res.scales, res.zeros
            if res.info.retries or res.info.dead_channels:
                notes.append(f"{name}: damp {res.info.damp:g} after {res.info.retries} retries, "
                             f"{res.info.dead_channels} dead input channels")
        else:
            q, scales, zeros = rtn(W, spec)
        act_scale = None
        if cfg.activations == "static":
            act_scale = float(act_absmax.max()) / 127 or 1.0
        kernel = real_kernel(spec, cfg.activations, W.shape[1]) if cfg.kernel == "auto" else None
        kernels[kernel or "simulated"] += 1
        bias = lin.bias.detach() if lin.bias is not None else None
        qlin = QuantLinear.from_codes(q, scales, zeros, spec, bias, cfg.activations, kernel or "simulated",
                                      input_scale, act_scale, cfg.granularity)
        set_module(model.module, name, qlin)

    def rewrite(model: Model, blk: BlockMap, stats) -> dict:
        chosen = set(_selected(cfg, blk))
        groups = [[n for n in g if n in chosen] for g in blk.input_groups]
        # 1. Every group's input scale, from the weights as they came in (a fold into a producer
        #    scales its rows, which per-row quantization grids follow exactly).
        plan = []
        for group in (g for g in groups if g):
            Ws = [get_module(model.module, n).weight.detach().float() for n in group]
            st = stats.get(group[0]) if stats else None
            s, target = None, _fold_target(blk, group)
            # SmoothQuant's own targets (the norm outputs) and every other input it can fold away
            if cfg.smoothquant is not None and (group[0] in blk.attn.inputs or blk.ffn.up in group
                                                or target is not None):
                s = smoothquant_scales(st.absmax, Ws, float(cfg.smoothquant))
                scaling[group[0]] = "smoothquant"
            elif cfg.method == "awq" and target is not None:
                s, alpha, _ = awq_scales(Ws, st.samples(), spec, cfg.awq_grid)
                scaling[group[0]] = alpha
            plan.append((group, st, s, target))
        # 2. Fold the scales into their producers, then 3. quantize every linear.
        for group, st, s, target in plan:
            if s is not None and target is not None:
                _fold(model, target, s)
        for group, st, s, target in plan:
            input_scale = 1.0 / s if s is not None and target is None else None
            absmax = None
            if st is not None and st.absmax is not None:
                absmax = st.absmax / s if s is not None else st.absmax
            for name in group:
                lin = get_module(model.module, name)
                W = lin.weight.detach().float().clone()
                if s is not None:
                    W = W * s[None, :]
                make(name, lin, W, st, input_scale, absmax)
        return {}

    want = set()
    if cfg.method == "gptq":
        want.add("hessian")
    if cfg.method == "awq":
        want.add("sample")
    if cfg.smoothquant is not None or cfg.activations == "static":
        want.add("absmax")
    if cfg.needs_calibration():
        calib = calibration_set(model, **(calibration or {}))
        log["calibration"] = calib.describe()
        run_sequential(model, calib, rewrite, want, select=lambda b: _selected(cfg, b),
                       progress=progress, desc=f"quantize {cfg.method}")
    else:
        for blk in model.arch.blocks:
            rewrite(model, blk, None)
    if cfg.lm_head and model.arch.head is not None:
        _quantize_head(model, cfg, kernels)
    elif cfg.lm_head:
        log["lm_head"] = "the model has no LM head; nothing to quantize there"
    log["kernels"] = dict(kernels)
    log["fused_input_groups"] = link_input_groups(model)
    log["simulated"] = kernels.get("simulated", 0) > 0
    if scaling:
        log["scales"] = dict(scaling)
    if notes:
        log["hessian_notes"] = notes
    return log


def _quantize_head(model: Model, cfg: QuantizeConfig, kernels: Counter) -> None:
    """Round-to-nearest on the LM head; a head tied to the input embeddings is untied first."""
    name = model.arch.head
    lin = get_module(model.module, name)
    W = lin.weight.detach().float().clone()
    q, scales, zeros = rtn(W, cfg.spec)
    kernel = real_kernel(cfg.spec, cfg.activations, W.shape[1]) if cfg.kernel == "auto" else None
    kernels[kernel or "simulated"] += 1
    act = cfg.activations if cfg.activations != "static" else "dynamic"
    if act == "dynamic" and kernel == "int8_static":
        kernel = "int8_dynamic"
    bias = lin.bias.detach() if getattr(lin, "bias", None) is not None else None
    set_module(model.module, name, QuantLinear.from_codes(q, scales, zeros, cfg.spec, bias, act,
                                                          kernel or "simulated", granularity=cfg.granularity))
    model.module.config.tie_word_embeddings = False


@register_stage("quantize", QuantizeConfig, doc="int8 / int4 / int3 weights (RTN, GPTQ, AWQ) and int8 "
                "activations (dynamic per token, or static with SmoothQuant), on integer kernels")
def run(model: Model, cfg: QuantizeConfig, ctx) -> tuple[Model, dict]:
    log = quantize_model(model, cfg, ctx.calibration_kwargs(), progress=ctx.progress)
    return model, log
