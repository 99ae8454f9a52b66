"""Static activation ranges (asymmetric zero points, the MSE clipping search) and int8 attention
inputs: the grids against their formulas written here, the kernels against int64 sums, the
stage's ranges against the calibration inputs, and the exports against the PyTorch model."""
from __future__ import annotations

import copy

import numpy as np
import openvino as ov
import pytest
import torch

from slimformer.data.calibration import calibration_set
from slimformer.errors import ConfigValueError
from slimformer.evaluate.embed import encode
from slimformer.export import export
from slimformer.export.compressed_tensors import scheme_of
from slimformer.model import get_module, save
from slimformer.nn.quant_linear import QuantLinear
from slimformer.nn.spec import QuantSpec, quantize
from slimformer.quant import QuantizeConfig, quantize_model
from slimformer.quant.act_range import RATIOS, choose
from slimformer.recover.qat import to_fake, to_real
from slimformer.runtime import open_model

CAL = {"samples": 4, "seq_len": 32}
SENTENCES = ["a short one", "the quick brown fox jumps over the lazy dog", "tokens " * 40, "x"]
OPENVINO = dict(method="gptq", bits=8, activations="static", smoothquant=0.5, act_symmetric=False,
                attention="int8")


def _grid(lo, hi, symmetric):
    """The int8 grid of a range, from its definition: symmetric s = max|x| / 127, z = 0;
    asymmetric over [min(lo, 0), max(hi, 0)]: s = (hi - lo) / 255, z = round(-128 - lo / s)."""
    if symmetric:
        return max(abs(lo), abs(hi)) / 127, 0.0
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    s = (hi - lo) / 255
    return s, float(round(-128 - lo / s))


def _fq(x, s, z):
    return (torch.clamp(torch.round(x / s) + z, -128, 127) - z) * s


# ---- grids and the range search ------------------------------------------------------------------

@pytest.mark.parametrize("lo,hi", [(-0.17, 5.0), (-3.0, 1.0), (0.5, 2.0), (-2.0, -0.5)])
def test_minmax_grid_is_the_formula_and_keeps_zero_exact(lo, hi):
    for symmetric in (True, False):
        s, z = choose(lo, hi, symmetric)
        ws, wz = _grid(lo, hi, symmetric)
        assert s == pytest.approx(ws, rel=1e-12) and z == wz
        x = torch.tensor([lo, hi, 0.0], dtype=torch.float64)
        back = _fq(x, s, z)
        assert float(back[2]) == 0.0  # padding and GELU / ReLU zeros stay exact
        assert float((back - x).abs().max()) <= s / 2 + 1e-12  # both ends inside the grid
    # a one-sided input: the asymmetric grid's step is about half the symmetric one's
    if lo > -0.2 and hi > 1:
        assert choose(lo, hi, False)[0] < 0.55 * choose(lo, hi, True)[0]


def test_mse_range_is_the_ratio_with_least_error():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 16, generator=g)
    x[0, 0] = 40.0  # one outlier token: the full range would make every other step coarse
    lo, hi = float(x.min()), float(x.max())
    for symmetric in (True, False):
        errs = []
        for r in RATIOS.tolist():  # brute force, written here
            s, z = _grid(lo * r, hi * r, symmetric)
            errs.append(float((_fq(x, s, z) - x).pow(2).mean()))
        best = min(range(len(errs)), key=errs.__getitem__)
        want = _grid(lo * RATIOS[best].item(), hi * RATIOS[best].item(), symmetric)
        got = choose(lo, hi, symmetric, "mse", x)
        assert got[0] == pytest.approx(want[0], rel=1e-9) and got[1] == want[1]
        assert errs[best] < 0.95 * errs[-1]  # below the full (minmax) range's error


# ---- the kernel -------------------------------------------------------------------------------------

@pytest.mark.parametrize("zero", [0, 37, -90])
def test_asymmetric_static_kernel_equals_int64_sums(zero):
    g = torch.Generator().manual_seed(1)
    W, b = torch.randn(24, 160, generator=g) * 0.05, torch.randn(24, generator=g)
    spec = QuantSpec(8, 0, True)
    q, s, z = quantize(W, spec)
    act_scale = 0.03
    kw = dict(act_scale=act_scale, act_zero=None if zero == 0 else zero)
    real = QuantLinear.from_codes(q, s, z, spec, b, "static", "int8_static", **kw)
    sim = QuantLinear.from_codes(q, s, z, spec, b, "static", "simulated", **kw)
    assert (real.act_zero is None) == (zero == 0)
    x = torch.randn(3, 11, 160, generator=g) * 2 + 1.5
    xq = (torch.round(x / act_scale) + zero).clamp(-128, 127).to(torch.int64)
    acc = (xq - zero) @ q.to(torch.int64).T  # int64 sums of (q_x - z) q_w
    ref = acc.double() * act_scale * s[:, 0].double() + b.double()
    for mod in (real, sim):
        assert torch.allclose(mod(x).double(), ref, rtol=1e-5, atol=1e-4)


# ---- the stage ---------------------------------------------------------------------------------------

def _block_inputs(model, calib, names):
    """min / max over real tokens of each named linear's input, in this (quantized) model."""
    seen = {n: [float("inf"), float("-inf")] for n in names}
    mask = {}

    def hook(name):
        def fn(mod, args):
            x = args[0][mask["m"]] if mask["m"] is not None else args[0]
            seen[name][0] = min(seen[name][0], float(x.min()))
            seen[name][1] = max(seen[name][1], float(x.max()))
        return fn
    hs = [get_module(model.module, n).register_forward_pre_hook(hook(n)) for n in names]
    with torch.no_grad():
        for batch in calib.batches:
            mask["m"] = batch["attention_mask"].bool() if "attention_mask" in batch else None
            model.module(**batch)
    for h in hs:
        h.remove()
    return seen


def test_stage_asymmetric_ranges_are_the_calibration_inputs(tiny):
    model = copy.deepcopy(tiny["bert"])
    quantize_model(model, QuantizeConfig(method="rtn", bits=8, activations="static", act_symmetric=False),
                   CAL, progress=False)
    calib = calibration_set(model, **CAL)
    # q/k/v read the block's input: the engine saw it through the already quantized blocks before
    firsts = [b.attn.q for b in model.arch.blocks]
    for q in firsts:
        get_module(model.module, q).unlink()
    seen = _block_inputs(model, calib, firsts)
    for name in firsts:
        mod = get_module(model.module, name)
        s, z = _grid(*seen[name], symmetric=False)
        assert float(mod.act_scale) == pytest.approx(s, rel=1e-5) and float(mod.act_zero) == z


def test_int8_attention_inputs_are_the_projection_outputs_range(tiny):
    model = copy.deepcopy(tiny["bert"])
    log = quantize_model(model, QuantizeConfig(**OPENVINO), CAL, progress=False)
    names = [n for b in model.arch.blocks for n in (b.attn.q, b.attn.k)]
    assert sorted(log.attention) == sorted(names)
    # the ranges were measured before any output grid existed: remove them all, measure here
    bare = copy.deepcopy(model)
    for n in names:
        get_module(bare.module, n).quantize_output(1.0, None).register_buffer("out_scale", None)
    calib = calibration_set(model, **CAL)
    absmax = {n: 0.0 for n in names}
    mask = {}

    def hook(name):
        def fn(mod, args, y):
            y = y[mask["m"]]
            absmax[name] = max(absmax[name], float(y.abs().max()))
        return fn
    hs = [get_module(bare.module, n).register_forward_hook(hook(n)) for n in names]
    with torch.no_grad():
        for batch in calib.batches:
            mask["m"] = batch["attention_mask"].bool()
            bare.module(**batch)
    for h in hs:
        h.remove()
    x = torch.randn(2, 5, model.arch.hidden_size)
    for n in names:
        mod = get_module(model.module, n)
        assert mod.out == "symmetric" and float(mod.out_scale) == pytest.approx(absmax[n] / 127, rel=1e-5)
        assert log.attention[n] == pytest.approx(absmax[n] / 127, rel=1e-5)
        y = mod(x) / mod.out_scale  # the output really leaves on the grid
        assert torch.allclose(y, y.round(), atol=1e-3)
    v = get_module(model.module, model.arch.blocks[0].attn.v)
    assert v.out == "none"


def test_int8_attention_refusals(tiny):
    with pytest.raises(ConfigValueError, match="activations: static"):
        QuantizeConfig(bits=8, activations="dynamic", attention="int8").validate()
    with pytest.raises(ConfigValueError, match="need activations: static"):
        QuantizeConfig(bits=8, activations="dynamic", act_symmetric=False).validate()
    with pytest.raises(ConfigValueError, match="act_range 'msee' unknown"):
        QuantizeConfig(bits=8, activations="static", act_range="msee").validate()
    with pytest.raises(ConfigValueError, match="rotary"):  # Llama: q / k are rotated after the projection
        quantize_model(copy.deepcopy(tiny["llama"]), QuantizeConfig(**OPENVINO), CAL, progress=False)


def test_save_load_and_qat_keep_the_grids(tiny, tmp_path):
    import slimformer
    model = copy.deepcopy(tiny["bert"])
    quantize_model(model, QuantizeConfig(**OPENVINO), CAL, progress=False)
    ids = torch.randint(5, 100, (2, 9))
    with torch.no_grad():
        want = model.module(input_ids=ids).last_hidden_state
    save(model, tmp_path / "m")
    back = slimformer.load(str(tmp_path / "m"))
    q = model.arch.blocks[0].attn.q
    for a, b in ((get_module(model.module, q), get_module(back.module, q)),):
        assert float(a.act_zero) == float(b.act_zero) and float(a.out_scale) == float(b.out_scale)
    with torch.no_grad():
        assert torch.equal(back.module(input_ids=ids).last_hidden_state, want)
    # QAT's trainable stand-ins keep both grids, and convert back to the same layers
    names = to_fake(back)
    with torch.no_grad():
        fake = back.module(input_ids=ids).last_hidden_state
    assert torch.allclose(fake, want, atol=1e-3 * float(want.abs().max()))
    to_real(back, names)
    b0 = get_module(back.module, q)
    assert isinstance(b0, QuantLinear) and b0.out == "symmetric" and b0.act_zero is not None
    with torch.no_grad():
        assert torch.allclose(back.module(input_ids=ids).last_hidden_state, want, atol=1e-5)


# ---- exports ---------------------------------------------------------------------------------------

def test_compressed_tensors_names_what_it_cannot_hold(tiny):
    model = copy.deepcopy(tiny["bert"])
    quantize_model(model, QuantizeConfig(**{**OPENVINO, "smoothquant": None}), CAL, progress=False)
    blk = model.arch.blocks[0]
    assert scheme_of(get_module(model.module, blk.attn.v))[1] == "an asymmetric static activation range (zero point)"
    get_module(model.module, blk.attn.q).register_buffer("act_zero", None)
    assert scheme_of(get_module(model.module, blk.attn.q))[1] == "an int8 output grid (int8 attention inputs)"


def test_onnx_and_openvino_run_the_grids(tiny, tmp_path):
    model = copy.deepcopy(tiny["bert"])
    quantize_model(model, QuantizeConfig(**OPENVINO), CAL, progress=False)
    want = encode(model, SENTENCES)
    n = len(model.arch.blocks)
    for fmt in ("onnx", "openvino"):
        res = export(model, fmt, tmp_path / fmt)
        assert res.details["linears"]["int8_output"] == 2 * n
        got = encode(open_model(str(tmp_path / fmt)), SENTENCES)
        assert float(torch.nn.functional.cosine_similarity(got, want).min()) >= 0.999
    # the IR's FakeQuantize bounds are slimformer's grids: (-128 - z) s .. (127 - z) s for the
    # linears' inputs, -128 s .. 127 s for the query / key outputs
    bounds = set()
    ir = ov.Core().read_model(str(tmp_path / "openvino" / "model.xml"))
    for op in ir.get_ops():
        if op.get_type_name() == "FakeQuantize":
            lo, hi = (float(op.input(i).get_source_output().get_node().get_data().reshape(-1)[0]) for i in (1, 2))
            bounds.add((round(lo, 5), round(hi, 5)))
    for blk in model.arch.blocks:
        v = get_module(model.module, blk.attn.v)
        s, z = float(v.act_scale), float(v.act_zero)
        assert (round((-128 - z) * s, 5), round((127 - z) * s, 5)) in bounds
        for name in (blk.attn.q, blk.attn.k):
            s = float(get_module(model.module, name).out_scale)
            assert (round(-128 * s, 5), round(127 * s, 5)) in bounds
    # OpenVINO runs the attention scores on int8: some MatMul / Subgraph of the compiled model is i8
    cm = ov.Core().compile_model(ir, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    precisions = {(op.get_rt_info()["layerType"].astype(str), op.get_rt_info()["runtimePrecision"].astype(str))
                  for op in cm.get_runtime_model().get_ops()}
    assert {("Subgraph", "i8"), ("MatMul", "i8")} & precisions, sorted(precisions)
    assert np.isfinite(got.numpy()).all()
