"""The `quantize` stage: (smooth,) quantize and swap in integer-kernel linears, block by block."""
from __future__ import annotations

import contextlib

import dataclasses
import re
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn

from ..data.calibration import calibration_set
from ..engine import block_scope, run_sequential
from ..errors import ConfigValueError
from ..model import BlockMap, Model, get_module, set_module
from ..nn.ggml_grid import choose_grid
from .ggml_refit import refit_rounds
from ..nn.ggml_linear import GgmlLinear
from ..nn.ggml_types import type_for_width
from ..nn.input_groups import link_input_groups
from ..nn.quant_linear import ACTIVATIONS, QuantLinear, real_kernel
from ..nn.spec import QuantSpec
from ..stages import StageLog, register_stage
from .act_range import RANGES, choose
from .allocate import LADDER, allocate_types
from .attention import attention_inputs, quantize_attention_inputs
from .ggml_mix import BASE, check_mix, mix_types, output_type
from .methods import gptq, rtn
from .smoothing import SmoothingConfig, smooth_block

METHODS = ("rtn", "gptq", "awq")
GROUPS = (0, 32, 64, 128, 256)


@dataclass
class QuantizeConfig:
    method: str = "rtn"  # rtn | gptq | awq
    bits: int = 8  # 8, 7, 4 or 3; 7: int8 codes on [-64, 63], the int8 kernels without 16-bit overflow
    # (OpenVINO / ONNX Runtime on CPUs without VNNI sum pairs of uint8 x int8 products in int16)
    group_size: int = 0  # 0: per output channel; else 32 / 64 / 128 / 256 input columns
    symmetric: bool = True
    full_range: bool = False  # int4 / int3 symmetric: use all 2^b levels (llama.cpp's Q4_0 scale rule)
    activations: str = "none"  # none (weight-only) | dynamic (int8, ranges per call) | static (calibrated)
    act_symmetric: bool = True  # static activations: symmetric range, or asymmetric (a zero point; all
    # 256 levels on one-sided inputs such as GELU's output)
    act_range: str = "minmax"  # static activations: the calibration range, or "mse" (clipped; act_range.py)
    attention: str = "float"  # int8: also the query / key outputs on static grids, for runtimes with int8
    # attention scores (OpenVINO); encoders without rotary positions (attention.py)
    granularity: str = "auto"  # dynamic activations: a range per "token", or one per "tensor" (faster);
    # auto: per token for causal LMs (outlier tokens; decoding is one token anyway), per tensor for encoders

    smoothquant: float | None = None  # SmoothQuant migration strength alpha; None: no smoothing
    # GPTQ: columns in order of decreasing Hessian diagonal; None: on for GGML grids (their scales
    # are fixed before GPTQ, so the order costs nothing; SmolLM2 Q4_0 KL 0.128 against 0.181
    # without), off for the integer group grids (whose groups are then fixed from the original weights)
    act_order: bool | None = None
    damp: float = 0.01  # GPTQ Hessian dampening, fraction of the mean diagonal
    blocksize: int = 128  # GPTQ column block
    awq_grid: int = 20  # AWQ: alphas 0, 1/grid, ..., (grid-1)/grid
    lm_head: bool = False  # also quantize the LM head, if the model has one (RTN; unties tied embeddings)
    ignore: list = field(default_factory=list)  # regexes of block linears kept in full precision
    kernel: str = "auto"  # auto: the integer kernel for the format | simulated (research only)
    # GGML grids for llama.cpp (instead of bits / group_size / symmetric): a type for every block
    # linear (q4_0 q4_1 q5_0 q5_1 q8_0 q4_k q5_k q6_k; a K-quant falls back as llama.cpp's does,
    # q4_k -> q5_0, q5_k -> q5_1, q6_k -> q8_0, where rows are not whole 256-column super-blocks),
    # and per-linear types by regex (first match wins), e.g. {"mlp.down_proj": q6_k}
    ggml: str | None = None
    ggml_types: dict = field(default_factory=dict)
    # or a llama.cpp file type (q4_k_m, q3_k_m, q4_0, ...): the per-tensor types llama-quantize
    # gives that file type, the head and embedding table included (ggml_mix.py); ggml_types
    # regexes still win over it, as llama-quantize's --tensor-type does
    ggml_mix: str | None = None
    # or a size target: bits per weight over the block linears, each linear's type chosen from
    # ggml_ladder by its measured sensitivity (allocate.py) on ggml_probe calibration windows
    ggml_bpw: float | None = None
    ggml_ladder: list = field(default_factory=lambda: list(LADDER))
    ggml_probe: int = 4
    # GPTQ on GGML grids: rounds of refitting the fp16 scales / mins to the codes on the full
    # Hessian (ggml_refit.py), GPTQ choosing the codes again between rounds; 0: the first grid kept
    ggml_refit: int = 2

    @property
    def spec(self) -> QuantSpec:
        return QuantSpec(int(self.bits), int(self.group_size), bool(self.symmetric), bool(self.full_range))

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigValueError(f"quantize method {self.method!r} unknown; methods: {', '.join(METHODS)}")
        if self.bits not in (3, 4, 7, 8):
            raise ConfigValueError(f"quantize bits must be 8, 7, 4 or 3 (got {self.bits!r})")
        if self.group_size not in GROUPS:
            raise ConfigValueError(f"quantize group_size must be one of {GROUPS} (0 = per channel); got {self.group_size!r}")
        if self.activations not in ACTIVATIONS:
            raise ConfigValueError(f"quantize activations {self.activations!r} unknown; use {', '.join(ACTIVATIONS)}")
        if self.activations != "none" and not self.spec.int8_rows:
            raise ConfigValueError("int8 activations need int8 symmetric per-channel weights: "
                                   "bits: 8 (or 7), group_size: 0, symmetric: true")
        if self.act_range not in RANGES:
            raise ConfigValueError(f"quantize act_range {self.act_range!r} unknown; use {', '.join(RANGES)}")
        if self.activations != "static" and (not self.act_symmetric or self.act_range != "minmax"):
            raise ConfigValueError("quantize act_symmetric and act_range set a static range; "
                                   "they need activations: static")
        if self.attention not in ("float", "int8"):
            raise ConfigValueError(f"quantize attention must be float or int8 (got {self.attention!r})")
        if self.attention == "int8" and self.activations != "static":
            raise ConfigValueError("quantize attention: int8 puts the scores' inputs on static grids; "
                                   "it needs activations: static")
        if self.full_range and (self.bits >= 7 or not self.symmetric):
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
        if not isinstance(self.ggml_refit, int) or self.ggml_refit < 0:
            raise ConfigValueError(f"quantize ggml_refit must be a whole number of rounds >= 0 (got {self.ggml_refit!r})")
        if self.ggml_bpw is not None:
            if not isinstance(self.ggml_bpw, (int, float)) or not 2.0 <= float(self.ggml_bpw) <= 8.5:
                raise ConfigValueError(f"quantize ggml_bpw must be a number of bits per weight in [2, 8.5] "
                                       f"(got {self.ggml_bpw!r})")
            if not self.ggml_ladder or self.ggml_probe < 1:
                raise ConfigValueError("quantize ggml_ladder needs at least one type and ggml_probe >= 1")
        if self.ggml_mix is not None:
            check_mix(self.ggml_mix)
            if self.ggml is not None or self.ggml_bpw is not None:
                raise ConfigValueError("quantize ggml_mix sets every linear's type; give it without ggml or ggml_bpw")
            if str(self.ggml_mix).lower() == "q2_k_s" and self.method == "rtn":
                raise ConfigValueError("quantize ggml_mix q2_k_s needs calibration data (llama-quantize refuses it "
                                       "without an importance matrix); use method: gptq")
        if self.ggml is not None or self.ggml_types or self.ggml_bpw is not None or self.ggml_mix is not None:
            from ..nn.ggml_types import ggml_type
            for name in [self.ggml or "q8_0", *self.ggml_types.values(), *self.ggml_ladder]:
                ggml_type(name)
            if self.ggml is None and self.ggml_bpw is None and self.ggml_mix is None:
                raise ConfigValueError("quantize ggml_types needs ggml: the type of the linears no regex names")
            if self.method == "awq" or self.activations != "none" or self.smoothquant is not None:
                raise ConfigValueError("quantize ggml grids take method rtn or gptq, weight-only, without "
                                       "SmoothQuant (llama.cpp quantizes activations itself)")
        for option, rxs in (("ignore", self.ignore), ("ggml_types", self.ggml_types)):
            for rx in rxs:
                try:
                    re.compile(rx)
                except re.error as e:
                    raise ConfigValueError(f"quantize {option} regex {rx!r} is invalid ({e})") from None

    @property
    def smoothing(self) -> SmoothingConfig | None:
        """The smoothing these options request (applied before quantizing; see smoothing.py)."""
        if self.smoothquant is not None:
            return SmoothingConfig("smoothquant", alpha=float(self.smoothquant))
        if self.method == "awq":
            return SmoothingConfig("awq", awq_grid=int(self.awq_grid))
        return None

    def ggml_type_of(self, name: str) -> str:
        for rx, t in self.ggml_types.items():
            if re.search(rx, name):
                return t
        return self.ggml

    def needs_calibration(self) -> bool:
        return self.method != "rtn" or self.smoothquant is not None or self.activations == "static"


@dataclass(kw_only=True)
class QuantizeLog(StageLog):
    """What a quantize did: the format, and the kernels the quantized linears run on."""
    method: str
    format: str  # QuantSpec.describe(), e.g. "int8 per-channel symmetric"
    activations: str
    granularity: str | None = None  # dynamic activations: token | tensor
    smoothquant: float | None = None
    act_order: bool = False
    lm_head: str | None = None  # why the LM head was not quantized, when asked for and absent
    kernels: dict[str, int] = field(default_factory=dict)  # {kernel: quantized linears on it}
    fused_input_groups: int = 0  # q/k/v and gate/up groups that share one activation quantization
    simulated: bool = False  # some linears have no integer kernel and run dequantized
    # per-group / per-layer detail (results.json; the report counts them)
    scales: dict | None = None  # {first linear of an input group: AWQ alpha, or "smoothquant"}
    hessian_notes: list[str] | None = None  # GPTQ: layers whose Hessian needed more damping
    attention: dict | None = None  # int8 attention inputs: {q / k projection: its output scale}
    ggml_types: dict | None = None  # GGML grids: {type: linears written in it} (after fallbacks)
    ggml_embedding: str | None = None  # ggml_mix: the token table's type in the GGUF export
    allocation: dict | None = None  # ggml_bpw: target, achieved bits per weight, type counts
    allocated: dict | None = None  # ggml_bpw: {linear: type} and each linear's measured sensitivity

    DETAIL = ("scales", "hessian_notes", "attention", "allocated")


def _selected(cfg: QuantizeConfig, blk: BlockMap) -> list[str]:
    return [n for n in blk.linears if not any(re.search(rx, n) for rx in cfg.ignore)]


def _check_dense(model: Model, cfg: QuantizeConfig) -> None:
    """Every linear to quantize must be a dense nn.Linear (a low-rank factorised one is not)."""
    for blk in model.arch.blocks:
        for name in _selected(cfg, blk):
            mod = get_module(model.module, name)
            if not isinstance(mod, nn.Linear):
                raise ConfigValueError(f"{name} is a {type(mod).__name__}, which quantize cannot convert; "
                                       f"add it to the quantize ignore list (e.g. ignore: ['{re.escape(name.split('.')[-1])}$'])")


def quantize_model(model: Model, cfg: QuantizeConfig, calibration: dict | None = None,
                   progress: bool = True) -> QuantizeLog:
    """Quantize `model` in place (its linears become QuantLinear). Returns the stage log."""
    cfg.validate()
    _check_dense(model, cfg)
    ggml_grids = bool(cfg.ggml or cfg.ggml_bpw is not None or cfg.ggml_mix)
    if ggml_grids and model.masks:
        raise ConfigValueError("quantize ggml grids keep pruned weights at zero only approximately (affine "
                               "K-quant mins); quantize pruned models with bits / group_size instead")
    if cfg.attention == "int8":
        attention_inputs(model)  # refuses a model whose q / k outputs are not the scores' inputs
        if model.lazy:
            raise ConfigValueError("quantize attention: int8 calibrates on whole-model passes; load the "
                                   "model without lazy (streaming) blocks")
    if cfg.act_order is None:
        cfg = dataclasses.replace(cfg, act_order=ggml_grids)
    if cfg.granularity == "auto":
        cfg = dataclasses.replace(cfg, granularity="token" if model.is_causal else "tensor")
    spec = cfg.spec
    log = QuantizeLog(stage="quantize", method=cfg.method, format=f"ggml {cfg.ggml}" if cfg.ggml else spec.describe(),
                      activations=cfg.activations,
                      granularity=cfg.granularity if cfg.activations == "dynamic" else None,
                      smoothquant=cfg.smoothquant, act_order=cfg.act_order)
    calib = calibration_set(model, **(calibration or {})) if cfg.needs_calibration() or cfg.ggml_bpw else None
    if cfg.ggml_mix is not None:
        cfg, log.ggml_embedding = _resolve_mix(model, cfg)
        log.format = f"ggml {cfg.ggml_mix} mix"
    if cfg.ggml_bpw is not None:
        names = [n for blk in model.arch.blocks for n in _selected(cfg, blk)]
        fixed = {n: cfg.ggml_type_of(n) for n in names if any(re.search(rx, n) for rx in cfg.ggml_types)}
        alloc = allocate_types(model, names, float(cfg.ggml_bpw), calib.batches[:cfg.ggml_probe],
                               tuple(cfg.ggml_ladder), fixed)
        chosen = {f"^{re.escape(n)}$": t for n, t in alloc.types.items()}
        cfg = dataclasses.replace(cfg, ggml=cfg.ggml or cfg.ggml_ladder[0], ggml_types={**cfg.ggml_types, **chosen})
        log.allocation = alloc.summary()
        log.allocated = {"types": alloc.types, "sensitivity": alloc.sensitivity}
        log.format = f"ggml mix at {alloc.bpw:.3f} bits per weight"
    kernels: Counter = Counter()
    notes: list[str] = []
    scaling = {}  # group head -> alpha (AWQ) or "smoothquant"
    smoothing = cfg.smoothing

    ggml_used: Counter = Counter()

    def make_ggml(name: str, lin: nn.Linear, stats, last: bool) -> None:
        """The linear on a GGML grid: sub-block scales (and mins) from the weights and the inputs'
        importance (the Hessian's diagonal), then the codes by GPTQ or rounding."""
        W = lin.weight.detach().float().clone()
        t = type_for_width(cfg.ggml_type_of(name), W.shape[1])
        ggml_used[t.name] += 1
        bias = lin.bias.detach() if lin.bias is not None else None
        if cfg.method == "gptq":
            H = stats.hessian(torch.float64, release=last)
            grid = choose_grid(W, t, torch.diag(H).float())
            rounds = cfg.ggml_refit
            # refit rounds read H after GPTQ has run: GPTQ then inverts a copy
            res = gptq(W, H, None, cfg.blocksize, cfg.damp, cfg.act_order, overwrite_h=not rounds, grid=grid)
            u = res.q
            if rounds:
                grid, u = refit_rounds(W, H, u, grid, rounds,
                                       lambda g: gptq(W, H, None, cfg.blocksize, cfg.damp, cfg.act_order, grid=g).q)
            del H
            if res.info.retries or res.info.dead_channels:
                notes.append(f"{name}: damp {res.info.damp:g} after {res.info.retries} retries, "
                             f"{res.info.dead_channels} dead input channels")
        else:
            grid = choose_grid(W, t)
            u = grid.quantize(W)
        kernels["simulated"] += 1
        set_module(model.module, name, GgmlLinear.from_codes(u, grid, bias))

    def make(name: str, lin: nn.Linear, stats, input_scale, last: bool = True) -> None:
        if cfg.ggml:
            return make_ggml(name, lin, stats, last)
        W = lin.weight.detach().float().clone()
        if cfg.method == "gptq":
            # of the inputs the layer receives, smoothing included; float64, handed over (the sum's
            # last reader takes the buffer itself) and overwritten by its inverse inside: at 11008
            # inputs (a 7B model's down projection) each [in, in] float64 copy is 0.9 GiB
            H = stats.hessian(torch.float64, release=last)
            res = gptq(W, H, spec, cfg.blocksize, cfg.damp, cfg.act_order, model.masks.get(name), overwrite_h=True)
            del H
            q, scales, zeros = res.q, res.scales, res.zeros
            if res.info.retries or res.info.dead_channels:
                notes.append(f"{name}: damp {res.info.damp:g} after {res.info.retries} retries, "
                             f"{res.info.dead_channels} dead input channels")
        else:
            q, scales, zeros = rtn(W, spec)
        act_scale = act_zero = None
        if cfg.activations == "static":
            samples = stats.samples() if cfg.act_range == "mse" else None
            act_scale, act_zero = choose(float(stats.amin.min()), float(stats.amax.max()), cfg.act_symmetric,
                                         cfg.act_range, samples)
            act_zero = None if cfg.act_symmetric else act_zero
        kernel = real_kernel(spec, cfg.activations, W.shape[1]) if cfg.kernel == "auto" else None
        kernels[kernel or "simulated"] += 1
        bias = lin.bias.detach() if lin.bias is not None else None
        qlin = QuantLinear.from_codes(q, scales, zeros, spec, bias, cfg.activations, kernel or "simulated",
                                      input_scale, act_scale, cfg.granularity, act_zero)
        set_module(model.module, name, qlin)

    def rewrite(model: Model, blk: BlockMap, stats) -> dict:
        chosen = set(_selected(cfg, blk))
        # 1. Smoothing, an exact transform: producers divided, every consumer's weights scaled, the
        #    statistics rescaled to the inputs the layers now receive. 2. Quantize every chosen linear.
        input_scales = {}
        if smoothing is not None:
            for g in smooth_block(model, blk, stats, smoothing, chosen, spec):
                scaling[g.group[0]] = g.alpha if smoothing.method == "awq" else "smoothquant"
                if g.target is None:  # kept inside the quantized layers: x -> x / s
                    input_scales.update({n: 1.0 / g.s for n in g.scaled})
        for group in blk.input_groups:
            names = [n for n in group if n in chosen]
            for name in names:
                make(name, get_module(model.module, name), stats.get(name) if stats else None,
                     input_scales.get(name), last=name == names[-1])
        return {}

    want = set()
    if cfg.method == "gptq":
        want.add("hessian")
    if cfg.activations == "static":
        want.add("range")
        if cfg.act_range == "mse":
            want.add("sample")
    if smoothing is not None:
        want |= smoothing.wants()
    if cfg.needs_calibration():
        log.calibration = calib.describe()
        run_sequential(model, calib, rewrite, want, select=lambda b: _selected(cfg, b),
                       progress=progress, desc=f"quantize {cfg.method}")
        if cfg.attention == "int8":
            log.attention = quantize_attention_inputs(model, calib, cfg.act_range)
    else:
        for blk in model.arch.blocks:
            with block_scope(model, blk):
                rewrite(model, blk, None)
    if cfg.lm_head and model.arch.head is not None:
        with model.lazy.hold_rest(model.module, commit=True) if model.lazy else contextlib.nullcontext():
            _quantize_head(model, cfg, kernels)
    elif cfg.lm_head:
        log.lm_head = "the model has no LM head; nothing to quantize there"
    log.kernels = dict(kernels)
    log.ggml_types = dict(ggml_used) or None
    log.fused_input_groups = link_input_groups(model.module, model.arch.input_groups)
    log.simulated = kernels.get("simulated", 0) > 0
    log.scales = dict(scaling) or None
    log.hessian_notes = notes or None
    return log


def _resolve_mix(model: Model, cfg: QuantizeConfig) -> tuple[QuantizeConfig, str]:
    """The llama.cpp file type as ggml / ggml_types (the user's regexes first: first match wins)
    and lm_head; returns it with the token table's type, which the GGUF export writes."""
    from ..model.families import family
    names = [n for blk in model.arch.blocks for n in _selected(cfg, blk)]
    widths = {n: get_module(model.module, n).weight.shape[1] for n in names}
    gguf_arch = family(model.arch).gguf_arch.get(model.arch.model_type)
    chosen = {f"^{re.escape(n)}$": t for n, t in
              mix_types(model.arch, cfg.ggml_mix, widths, cfg.method != "rtn", gguf_arch).items()}
    hidden = get_module(model.module, model.arch.embeddings[0]).weight.shape[1]
    base, head = BASE[check_mix(cfg.ggml_mix)], output_type(cfg.ggml_mix, hidden)
    # an own output layer (untied, or untied by lm_head): on its type, the table on the base type
    own_head = model.arch.head is not None and (not model.head_is_tied or cfg.lm_head)
    if own_head:
        chosen[f"^{re.escape(model.arch.head)}$"] = head
    table = type_for_width(base, hidden).name if own_head else head
    types = dict(cfg.ggml_types)
    for rx, t in chosen.items():  # a user regex equal to a linear's own wins too
        types.setdefault(rx, t)
    return dataclasses.replace(cfg, ggml=base, ggml_types=types, lm_head=own_head), table


def _quantize_head(model: Model, cfg: QuantizeConfig, kernels: Counter) -> None:
    """Round-to-nearest on the LM head; a head tied to the input embeddings is untied first."""
    name = model.arch.head
    lin = get_module(model.module, name)
    W = lin.weight.detach().float().clone()
    if cfg.ggml:  # round-to-nearest on the head's GGML grid
        t = type_for_width(cfg.ggml_type_of(name), W.shape[1])
        grid = choose_grid(W, t)
        kernels["simulated"] += 1
        bias = lin.bias.detach() if getattr(lin, "bias", None) is not None else None
        set_module(model.module, name, GgmlLinear.from_codes(grid.quantize(W), grid, bias))
        model.module.config.tie_word_embeddings = False
        return
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
                "activations (dynamic per token, or static with SmoothQuant), on integer kernels", streams=True)
def run(model: Model, cfg: QuantizeConfig, ctx) -> tuple[Model, QuantizeLog]:
    log = quantize_model(model, cfg, ctx.calibration_kwargs(), progress=ctx.progress)
    return model, log
