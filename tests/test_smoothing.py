"""Smoothing (quant/smoothing.py) before the quantizers: GPTQ must see the inputs a layer really
receives once a scale is folded into its producer, and a layer kept in full precision (`ignore`)
must keep its function. The references are computed here from inputs captured with hooks on the
quantized model, and from the original model's own outputs."""
from __future__ import annotations

import copy

import pytest
import torch

from slimformer.data.calibration import calibration_set
from slimformer.engine import run_sequential
from slimformer.model import get_module
from slimformer.quant import QuantizeConfig, QuantLinear, quantize_model
from slimformer.quant.methods import gptq
from slimformer.quant.smoothing import SmoothingConfig, smooth_block

CAL = {"samples": 4, "seq_len": 32}
LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _captured_inputs(model, name: str, calib) -> torch.Tensor:
    """Every non-padding input row the module `name` receives on the calibration batches."""
    rows = []

    def hook(module, args):
        rows.append(args[0].detach())

    handle = get_module(model.module, name).register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for b in calib.batches:
                model.module(**b, **({"use_cache": False} if model.is_causal else {}))
    finally:
        handle.remove()
    out = []
    for b, x in zip(calib.batches, rows):
        mask = b.get("attention_mask")
        out.append(x[mask.bool()] if mask is not None else x.reshape(-1, x.shape[-1]))
    return torch.cat(out).double()


def _hessian(X: torch.Tensor) -> torch.Tensor:
    return (2.0 / X.shape[0]) * (X.T @ X)  # GPTQ's H = 2 X^T X / n, written out here


def _ratio(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    return before.double() / after.double()


# (family, ignore, layer whose codes are checked, how the test reads its smoothing scale s)
CASES = [
    ("llama", [], "model.layers.0.self_attn.q_proj", "norm:model.layers.0.input_layernorm"),
    ("llama", [], "model.layers.0.self_attn.v_proj", "norm:model.layers.0.input_layernorm"),
    ("llama", [rf"\.{n}$" for n in LLAMA_LINEARS if n not in ("gate_proj", "up_proj")],
     "model.layers.0.mlp.up_proj", "norm:model.layers.0.post_attention_layernorm"),
    ("llama", [rf"\.{n}$" for n in LLAMA_LINEARS if n != "down_proj"],
     "model.layers.0.mlp.down_proj", "rows:model.layers.0.mlp.up_proj"),
    ("bert", [], "encoder.layer.0.attention.self.query", "inlayer"),
    # BERT's o reads attention(v): its scale folds into the value rows (the one fold MiniLM's
    # default recipe makes); q/k/v kept dense so value's columns stay unscaled
    ("bert", [r"\.(query|key|value)$"], "encoder.layer.0.attention.output.dense",
     "rows:encoder.layer.0.attention.self.value"),
]


@pytest.mark.parametrize("family,ignore,layer,where", CASES)
def test_gptq_after_smoothing_uses_the_hessian_of_the_inputs_the_layer_receives(tiny, family, ignore, layer, where):
    model0 = tiny[family]
    model = copy.deepcopy(model0)
    cfg = QuantizeConfig(method="gptq", bits=4, group_size=32, smoothquant=0.5, ignore=ignore, kernel="simulated")
    quantize_model(model, cfg, CAL, progress=False)
    qlin = get_module(model.module, layer)
    assert isinstance(qlin, QuantLinear)
    calib = calibration_set(model0, **CAL)
    X = _captured_inputs(model, layer, calib)  # what reaches the codes (before any in-layer scale)
    W0 = get_module(model0.module, layer).weight.detach().double()
    kind, _, producer = where.partition(":")
    if kind == "norm":  # the norm's weight was divided by s
        s = _ratio(get_module(model0.module, producer).weight, get_module(model.module, producer).weight)
    elif kind == "rows":  # the producer's rows were divided by s (its columns untouched: it is ignored)
        s = _ratio(get_module(model0.module, producer).weight, get_module(model.module, producer).weight)[:, 0]
    else:  # kept inside the layer: the codes see x * input_scale, with input_scale = 1 / s
        X = X * qlin.input_scale.double()
        s = 1.0 / qlin.input_scale.double()
    assert not torch.allclose(s, torch.ones_like(s))  # smoothing really happened
    ref = gptq((W0 * s[None, :]).float(), _hessian(X).float(), cfg.spec, cfg.blocksize, cfg.damp)
    codes = qlin.codes().to(torch.int16)
    mismatch = (codes != ref.q.to(torch.int16)).float().mean().item()
    # float rounding of H (float32 products summed in float64, here one float64 product) may flip
    # a code that sits on a rounding boundary; a wrong Hessian changes a large share of them
    assert mismatch < 0.005, f"{mismatch:.2%} of the codes differ from GPTQ on the captured inputs"
    assert torch.allclose(qlin.scales, ref.scales.float(), rtol=1e-4)


def _block0_outputs(model, name: str, ids: torch.Tensor) -> torch.Tensor:
    out = []
    handle = get_module(model.module, name).register_forward_hook(lambda m, a, y: out.append(y.detach()))
    try:
        with torch.no_grad():
            model.module(ids, use_cache=False)
    finally:
        handle.remove()
    return out[0]


def test_ignored_layer_in_a_smoothed_group_computes_what_it_did(tiny):
    """k_proj kept dense while q and v are smoothed and quantized: the scale folded into the shared
    norm is compensated in k_proj's weights too, so its outputs in block 0 (same input as the
    original: the embeddings) equal the original's."""
    model0 = tiny["llama"]
    model = copy.deepcopy(model0)
    quantize_model(model, QuantizeConfig(method="rtn", bits=8, smoothquant=0.5, ignore=[r"\.k_proj$"],
                                         kernel="simulated"), CAL, progress=False)
    k = "model.layers.0.self_attn.k_proj"
    assert not isinstance(get_module(model.module, k), QuantLinear)
    norm = "model.layers.0.input_layernorm"
    assert not torch.equal(get_module(model.module, norm).weight, get_module(model0.module, norm).weight)
    ids = torch.randint(5, 300, (2, 16))
    ref, got = _block0_outputs(model0, k, ids), _block0_outputs(model, k, ids)
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-5), (got - ref).abs().max()


@pytest.fixture(scope="module")
def llama_mha(tiny_dir, tmp_path_factory):
    """A tiny Llama whose every head has its own K/V (no GQA): o's scale folds into v's rows."""
    import shutil

    import transformers as T
    from slimformer.model import load
    folder = tmp_path_factory.mktemp("llama-mha")
    cfg = T.AutoConfig.from_pretrained(tiny_dir["llama"])
    cfg.num_key_value_heads = cfg.num_attention_heads
    torch.manual_seed(0)
    T.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    for f in tiny_dir["llama"].iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, folder / f.name)
    return load(folder)


# (family, method, which linears are quantized: the rest kept dense; the transform must be exact)
EXACT = [
    ("llama", "smoothquant", lambda n: not n.endswith(".k_proj")),
    ("llama", "awq", lambda n: not n.endswith(".k_proj")),
    ("qwen2", "smoothquant", lambda n: not n.endswith(".k_proj")),
    ("llama-mha", "smoothquant", lambda n: not n.endswith(".gate_proj")),  # v rows under o; up rows under down
    ("gpt2", "smoothquant", lambda n: True),  # LayerNorm weight and bias divided
    ("bert", "smoothquant", lambda n: n.endswith("attention.output.dense")),  # value rows (and bias)
]


@pytest.mark.parametrize("family,method,chosen", EXACT, ids=[f"{f}-{m}" for f, m, _ in EXACT])
def test_smoothing_alone_is_an_exact_transform(tiny, llama_mha, family, method, chosen):
    """Smoothing every block, with layers of shared groups left out of quantization, leaves the
    model's outputs unchanged (float tolerance) while producers and weights did change."""
    model0 = llama_mha if family == "llama-mha" else tiny[family]
    model = copy.deepcopy(model0)
    cfg = QuantizeConfig(method="rtn" if method == "smoothquant" else "awq", bits=4, group_size=32,
                         smoothquant=0.5 if method == "smoothquant" else None)
    smoothing = cfg.smoothing
    assert isinstance(smoothing, SmoothingConfig) and smoothing.method == method
    applied = []

    def rewrite(m, blk, stats):
        applied.extend(smooth_block(m, blk, stats, smoothing, {n for n in blk.linears if chosen(n)}, cfg.spec))
        return {}

    run_sequential(model, calibration_set(model, **CAL), rewrite, smoothing.wants(), progress=False)
    assert applied and all(g.target is not None for g in applied)
    dense_scaled = [n for g in applied for n in g.scaled if not chosen(n)]
    if family not in ("gpt2", "bert"):  # an ignored member of a folded group was compensated
        assert dense_scaled
    if family == "llama-mha":
        assert {g.target[0] for g in applied} == {"norm", "rows"}
    ids = torch.randint(5, 300, (2, 16))
    with torch.no_grad():
        ref, got = model0.module(ids)[0], model.module(ids)[0]
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4), (got - ref).abs().max()
    moved = [g for g in applied if not torch.allclose(g.s, torch.ones_like(g.s))]
    assert moved  # some scale is not 1 (AWQ may pick alpha = 0, s = 1, for a group)
    producer = moved[0].target[1]
    assert not torch.equal(get_module(model.module, producer).weight, get_module(model0.module, producer).weight)


def test_rescaled_statistics_are_those_of_the_scaled_inputs():
    from slimformer.engine.stats import LinearStats
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=g)
    d = torch.rand(6, generator=g) + 0.5
    want = frozenset({"norms", "mean", "hessian", "absmax", "sample"})
    a, b = LinearStats(want), LinearStats(want)
    a.update(x)
    a.rescale_inputs(d)
    b.update(x * d)
    assert torch.allclose(a.hessian(torch.float64), b.hessian(torch.float64), rtol=1e-6)
    assert torch.allclose(a.norms, b.norms, rtol=1e-5)
    assert torch.allclose(a.mean, b.mean, rtol=1e-5, atol=1e-7)
    assert torch.allclose(a.absmax, b.absmax, rtol=1e-6)
    assert torch.allclose(a.samples(), b.samples(), rtol=1e-6)


def test_low_rank_linears_are_refused_by_quantize_and_left_alone_by_smoothing(tiny):
    """A low-rank factorised up_proj (trim's lowrank) is not a dense Linear: quantizing it is a
    one-line error naming it; ignored, its group is not smoothed (it cannot be scaled exactly)."""
    from slimformer.errors import ConfigValueError
    from slimformer.nn import LowRankLinear
    from slimformer.trim import TrimConfig, trim_model
    model0 = copy.deepcopy(tiny["llama"])
    trim_model(model0, TrimConfig(lowrank={r"mlp\.up_proj": 0.25}, lowrank_method="svd", compensate="none",
                                  score="magnitude"), CAL, progress=False)
    up = "model.layers.0.mlp.up_proj"
    assert isinstance(get_module(model0.module, up), LowRankLinear)
    with pytest.raises(ConfigValueError, match="up_proj is a LowRankLinear"):
        quantize_model(copy.deepcopy(model0), QuantizeConfig(method="gptq", bits=8), CAL, progress=False)
    model = copy.deepcopy(model0)
    log = quantize_model(model, QuantizeConfig(method="rtn", bits=8, smoothquant=0.5, ignore=[r"\.up_proj$"],
                                               kernel="simulated"), CAL, progress=False)
    assert not any(k.endswith(("gate_proj", "down_proj")) for k in (log.scales or {}))
    assert any(k.endswith("q_proj") for k in (log.scales or {}))
    ids = torch.randint(5, 300, (2, 12))
    with torch.no_grad():
        ref, got = model0.module(ids).logits, model.module(ids).logits
    assert float((got - ref).norm() / ref.norm()) < 0.05  # int8 error only: nothing scaled wrongly
