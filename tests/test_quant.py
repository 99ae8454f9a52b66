"""Quantize: grids, GPTQ / AWQ / SmoothQuant against references written here from the papers,
integer kernels against the simulated computation, the stage on every family, saved formats."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import transformers as T

from slimformer import compress, load, save
from slimformer.errors import RecipeError
from slimformer.model import get_module
from slimformer.prune import PruneConfig, prune_model
from slimformer.quant import QuantizeConfig, QuantLinear, QuantSpec, quantize_model
from slimformer.quant.methods import awq_scales, gptq, rtn, smoothquant_scales
from slimformer.nn.quant_linear import real_kernel
from slimformer.nn.spec import dequantize, pack_int4, quantize, unpack_int4
from slimformer.recipe import parse_recipe

CAL = {"samples": 4, "seq_len": 32}


def correlated_inputs(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) / d ** 0.5 + torch.eye(d)
    scale = torch.rand(d, generator=g) * 3 + 0.1
    return (torch.randn(n, d, generator=g) @ mix) * scale


# ---- integer grids -------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [QuantSpec(8, 0, True), QuantSpec(4, 32, False), QuantSpec(4, 64, True),
                                  QuantSpec(3, 32, True)])
def test_grid_roundtrip_error_and_exact_zero(spec):
    W = torch.randn(16, 96)
    W[3, 10] = 0.0
    q, s, z = quantize(W, spec)
    assert q.min() >= spec.qmin and q.max() <= spec.qmax
    assert s.shape == (16, spec.groups(96))  # 96 = 64 + 32: a narrower last group for g64
    deq = dequantize(q, s, z, spec)
    g = torch.arange(96) // spec.width(96)
    assert bool(((deq - W).abs() <= s[:, g] / 2 + 1e-6).all())  # round to nearest: half a step
    assert deq[3, 10] == 0.0  # zero is a grid point, so pruned weights stay zero


def test_int4_packing_roundtrip():
    q = torch.randint(-8, 8, (5, 33), dtype=torch.int8)
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 17)
    assert torch.equal(unpack_int4(packed, 33), q)


# ---- GPTQ ----------------------------------------------------------------------------------------

def gptq_reference(W, H, spec, damp=0.01):
    """GPTQ as in the paper's equations, column by column with the explicit inverse Hessian:
    q = quant(w_i); W[:, i:] -= (w_i - q) / Hinv_ii * Hinv[i, i:]; then eliminate i from Hinv."""
    W = W.clone().double()
    H = H.double() + damp * torch.diag(H).mean() * torch.eye(H.shape[0], dtype=torch.float64)
    Hinv = torch.linalg.inv(H)
    cols = W.shape[1]
    width = spec.width(cols)
    out = torch.zeros_like(W)
    for i in range(cols):
        if i % width == 0:
            blk = W[:, i:i + width].float()
            if spec.symmetric:
                s, z = blk.abs().amax(1) / spec.qmax, torch.zeros(W.shape[0])
            else:
                lo, hi = blk.amin(1).clamp(max=0), blk.amax(1).clamp(min=0)
                s = (hi - lo) / (2 ** spec.bits - 1)
                z = torch.round(spec.qmin - lo / s)
            s, z = s.double(), z.double()
        q = (torch.clamp(torch.round(W[:, i] / s) + z, spec.qmin, spec.qmax) - z) * s
        err = (W[:, i] - q) / Hinv[i, i]
        W[:, i:] -= err[:, None] * Hinv[i, i:][None, :]
        out[:, i] = q
        Hinv = Hinv - Hinv[:, i:i + 1] @ Hinv[i:i + 1, :] / Hinv[i, i]
    return out.float()


@pytest.mark.parametrize("spec", [QuantSpec(4, 32, False), QuantSpec(4, 0, True), QuantSpec(3, 64, True)])
def test_gptq_matches_the_papers_column_by_column_update(spec):
    torch.manual_seed(0)
    X = correlated_inputs(512, 96)
    W = torch.randn(24, 96)
    H = 2 * X.T @ X / X.shape[0]
    res = gptq(W, H, spec, blocksize=32)
    mine = dequantize(res.q, res.scales, res.zeros, spec)
    ref = gptq_reference(W, H, spec)
    same = (mine - ref).abs() < 1e-4
    assert same.float().mean() > 0.99  # a few codes may flip at exact rounding ties
    err = lambda Q: float((X @ (Q - W).T).pow(2).mean())
    assert err(mine) == pytest.approx(err(ref), rel=0.02)


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("spec", [QuantSpec(4, 32, False), QuantSpec(4, 64, True), QuantSpec(8, 0, True)])
def test_gptq_output_error_never_above_rtn(spec, act_order):
    X = correlated_inputs(1024, 96, seed=1)
    W = torch.randn(32, 96)
    H = 2 * X.T @ X / X.shape[0]
    res = gptq(W, H, spec, act_order=act_order)
    err = lambda Q: float((X @ (Q - W).T).pow(2).mean())
    gptq_err = err(dequantize(res.q, res.scales, res.zeros, spec))
    rtn_err = err(dequantize(*rtn(W, spec), spec))
    assert gptq_err < 0.8 * rtn_err


def test_gptq_keeps_pruned_weights_zero():
    X = correlated_inputs(256, 64)
    W = torch.randn(8, 64)
    keep = torch.rand(8, 64) > 0.5
    W = W * keep
    res = gptq(W, 2 * X.T @ X / 256, QuantSpec(4, 32, False), keep=keep)
    assert bool((dequantize(res.q, res.scales, res.zeros, QuantSpec(4, 32, False))[~keep] == 0).all())


# ---- AWQ and SmoothQuant -------------------------------------------------------------------------

def test_awq_search_equals_a_brute_force_grid():
    torch.manual_seed(0)
    X = correlated_inputs(256, 64)
    X[:, :4] *= 20  # salient channels
    Ws = [torch.randn(16, 64), torch.randn(8, 64)]
    spec = QuantSpec(4, 32, True)

    def fq(W):  # symmetric group fake-quantization, written out here
        Wg = W.view(W.shape[0], -1, 32)
        s = Wg.abs().amax(-1, keepdim=True) / 7
        return (torch.clamp(torch.round(Wg / s), -8, 7) * s).view_as(W)

    xm = X.abs().mean(0)
    losses = []
    for k in range(20):
        s = xm.pow(k / 20)
        s = s / (s.max() * s.min()).sqrt()
        losses.append(sum(float(((X / s) @ fq(W * s).T - X @ W.T).pow(2).sum()) for W in Ws))
    s, alpha, mine = awq_scales(Ws, X, spec, grid=20)
    assert mine == pytest.approx(losses, rel=1e-4)
    assert alpha == min(range(20), key=losses.__getitem__) / 20
    assert losses[int(alpha * 20)] < losses[0]  # better than plain round-to-nearest here


def test_smoothquant_scales_formula():
    a = torch.tensor([1.0, 16.0, 0.25])
    W1, W2 = torch.tensor([[2.0, -1.0, 4.0]]), torch.tensor([[-8.0, 0.5, 1.0]])
    s = smoothquant_scales(a, [W1, W2], alpha=0.5)
    torch.testing.assert_close(s, torch.sqrt(a) / torch.sqrt(torch.tensor([8.0, 1.0, 4.0])))
    # after migration, activation and weight ranges are equal per channel
    torch.testing.assert_close(a / s, torch.tensor([8.0, 1.0, 4.0]) * s)


def test_full_range_grid_uses_all_levels_and_beats_max_over_7():
    """The largest-magnitude weight of a group lands on -8 (its sign in the scale); every other
    weight rounds to a step of max/8; the mean squared error is below the max/7 grid's."""
    torch.manual_seed(0)
    W = torch.randn(64, 128)
    full, plain = QuantSpec(4, 32, True, True), QuantSpec(4, 32, True)
    q, s, z = quantize(W, full)
    g = W.view(64, 4, 32)
    m = g.gather(2, g.abs().argmax(2, keepdim=True))[..., 0]
    torch.testing.assert_close(s, m / -8)
    assert bool((q.view(64, 4, 32).gather(2, g.abs().argmax(2, keepdim=True)) == -8).all())
    err = lambda spec: float(((dequantize(*quantize(W, spec), spec) - W) ** 2).mean())  # noqa: E731
    assert err(full) < err(plain)


# ---- kernels ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec,act,kernel", [
    (QuantSpec(8, 0, True), "dynamic", "int8_dynamic"), (QuantSpec(8, 0, True), "static", "int8_static"),
    (QuantSpec(8, 0, True), "none", "int8_weight"), (QuantSpec(4, 64, False), "none", "int4_weight"),
    (QuantSpec(4, 128, True), "none", "int4_weight"), (QuantSpec(4, 32, True, True), "none", "int4_weight"),
    (QuantSpec(3, 32, True), "none", None)])
def test_kernels_compute_what_the_codes_mean(spec, act, kernel):
    torch.manual_seed(0)
    W, b = torch.randn(48, 192) * 0.05, torch.randn(48)
    q, s, z = quantize(W, spec)
    assert real_kernel(spec, act, 192) == kernel
    kw = dict(act_scale=3.0 / 127 if act == "static" else None)
    real = QuantLinear.from_codes(q, s, z, spec, b, act, kernel or "simulated", **kw)
    sim = QuantLinear.from_codes(q, s, z, spec, b, act, "simulated", **kw)
    for tokens in (1, 9):
        x = torch.randn(2, tokens, 192)
        y, ys = real(x), sim(x)
        # bf16 activations (weight-only kernels) cost about 3 significant digits
        tol = 1e-4 if act != "none" else 2e-2
        assert float((y - ys).abs().max()) <= tol * float(ys.abs().max())


def _int8_reference(x: torch.Tensor, q: torch.Tensor, w_scale: torch.Tensor, per_tensor: bool) -> torch.Tensor:
    """Asymmetric 8-bit activations (range including 0, one per row or per tensor), int64 sums."""
    rows = x.reshape(1, -1) if per_tensor else x
    lo = rows.amin(-1, keepdim=True).clamp(max=0)
    hi = rows.amax(-1, keepdim=True).clamp(min=0)
    s = torch.where(hi > lo, (hi - lo) / 255, torch.ones_like(hi))
    z = torch.round(-128 - lo / s)
    xq = (torch.round(rows / s) + z).clamp(-128, 127).view_as(x).to(torch.int64)
    zz = z.expand(x.shape[0], 1) if per_tensor else z
    acc = xq @ q.to(torch.int64).T - zz.to(torch.int64) * q.to(torch.int64).sum(1)[None, :]
    return acc.double() * (s.view(-1)[0] if per_tensor else s).double() * w_scale.double()


@pytest.mark.parametrize("per_tensor", [False, True])
def test_exact_int8_kernels_equal_an_int64_reference(per_tensor):
    """The _int_mm paths (used everywhere the fbgemm kernel is not exact) against int64 sums written
    here; worst-case codes (+-127) and wide activations, where int16 pair sums would saturate."""
    from slimformer.nn import kernels
    g = torch.Generator().manual_seed(0)
    q = torch.where(torch.rand(16, 128, generator=g) < 0.5, 127, -127).to(torch.int8)
    w_scale = torch.rand(16, generator=g) + 0.5
    x = torch.randn(6, 128, generator=g) * 3
    colsum = q.sum(1, dtype=torch.int32).float()
    fn = kernels.int8_per_tensor if per_tensor else kernels.int8_per_token
    got = fn(x, q.t(), colsum, w_scale)
    ref = _int8_reference(x, q, w_scale, per_tensor)
    assert torch.allclose(got.double(), ref, rtol=1e-5, atol=1e-3)


def test_fbgemm_is_used_only_where_it_is_exact():
    """fbgemm_exact() says whether fbgemm's kernel matches the int64 reference on a saturating case
    built here (AVX2 without VNNI: it does not); where it does, it must also match on random data."""
    from slimformer.nn import kernels
    q = torch.full((8, 64), 127, dtype=torch.int8)
    q[::2] = -127
    x = torch.linspace(-1, 1, 64)[None, :]
    ref = _int8_reference(x, q, torch.ones(8), per_tensor=False)
    fast = kernels.fbgemm_dynamic(x, kernels.fbgemm_pack(q, torch.ones(8), None)).double()
    assert kernels.fbgemm_exact() == bool(torch.allclose(fast, ref, rtol=1e-4, atol=1e-3))
    if kernels.fbgemm_exact():
        torch.manual_seed(0)
        W = torch.randn(64, 128)
        lin = QuantLinear.from_codes(*quantize(W, QuantSpec()), QuantSpec(), None, "dynamic", "int8_dynamic")
        x = torch.randn(5, 128)
        rows = torch.cat([lin(x[i:i + 1]) for i in range(5)])  # fbgemm, one row at a time
        torch.testing.assert_close(rows, lin(x), rtol=1e-5, atol=1e-5)


def test_7bit_weights_take_fbgemm_exactly_on_every_cpu(monkeypatch):
    """bits 7: codes on [-64, 63], so fbgemm's int16 pair sums (2 x 255 x 64 < 2^15) cannot
    saturate; the layer takes fbgemm even where fbgemm_exact() is False (forced here, as on a CPU
    without VNNI) and still gives the int64 reference on the widest activations and codes."""
    from slimformer.nn import kernels
    if not kernels.fbgemm_available():
        pytest.skip("no fbgemm in this PyTorch build")
    monkeypatch.setattr(kernels, "_FBGEMM_EXACT", False)
    spec = QuantSpec(bits=7)
    W = torch.full((8, 64), 1.0)
    W[::2] = -1.0
    q, sc, z = quantize(W, spec)
    assert int(q.abs().max()) == 63 and spec.qmin == -64
    lin = QuantLinear.from_codes(q, sc, z, spec, None, "dynamic", "int8_dynamic")
    calls = []
    monkeypatch.setattr(kernels, "fbgemm_dynamic", lambda *a, _f=kernels.fbgemm_dynamic: calls.append(1) or _f(*a))
    x = torch.ones(1, 64)
    x[0, ::4] = -1.0  # activation codes 0 and 255 against codes +-63: the widest pair sums
    ref = _int8_reference(x, q, sc[:, 0], per_tensor=False)
    assert torch.allclose(lin(x).double(), ref, rtol=1e-4, atol=1e-3) and calls


@pytest.mark.parametrize("fbgemm", [False, True])
@pytest.mark.parametrize("granularity", ["token", "tensor"])
def test_int8_dynamic_layer_computes_the_reference_on_either_path(monkeypatch, fbgemm, granularity):
    """QuantLinear's int8_dynamic forward, with fbgemm forced off (the path of CPUs without VNNI)
    and, where fbgemm is exact here, on; one token and many, against the int64 reference."""
    from slimformer.nn import kernels
    if fbgemm and not kernels.fbgemm_exact():
        pytest.skip("fbgemm's kernel saturates on this CPU (no VNNI); the other case covers it")
    monkeypatch.setattr(kernels, "_FBGEMM_EXACT", fbgemm)
    torch.manual_seed(1)
    W = torch.randn(32, 96)
    q, sc, z = quantize(W, QuantSpec())
    lin = QuantLinear.from_codes(q, sc, z, QuantSpec(), None, "dynamic", "int8_dynamic", granularity=granularity)
    for x in (torch.randn(1, 96) * 4, torch.randn(7, 96) * 4):
        ref = _int8_reference(x, q, sc[:, 0], per_tensor=granularity == "tensor")
        assert torch.allclose(lin(x).double(), ref, rtol=1e-4, atol=1e-3)


# ---- the stage on models -------------------------------------------------------------------------

CONFIGS = {
    "w8a8-dynamic": dict(method="rtn", bits=8, activations="dynamic"),
    "w8a8-static-smoothquant": dict(method="rtn", bits=8, activations="static", smoothquant=0.5),
    "gptq-int4-g32": dict(method="gptq", bits=4, group_size=32, symmetric=False),
    "awq-int4-g32": dict(method="awq", bits=4, group_size=32),
    "gptq-int8-act-order": dict(method="gptq", bits=8, act_order=True),
    "gptq-int4-g32-full-range": dict(method="gptq", bits=4, group_size=32, full_range=True),
    "rtn-int4-g32": dict(method="rtn", bits=4, group_size=32, symmetric=False),
}


def _rel_err(model, ref, x):
    with torch.no_grad():
        a, b = model.module(x)[0], ref.module(x)[0]
    return float((a - b).norm() / b.norm())


def _grid_step(W, bits, group_size, symmetric):
    """The step of each weight's grid, [out, in], from the grid's definition: max|w| / (2^(b-1) - 1)
    (symmetric) or (max(w, 0) - min(w, 0)) / (2^b - 1) (asymmetric), per row and group."""
    step = torch.empty_like(W)
    g = group_size or W.shape[1]
    for c in range(0, W.shape[1], g):
        w = W[:, c:c + g]
        if symmetric:
            step[:, c:c + g] = w.abs().amax(1, keepdim=True) / (2 ** (bits - 1) - 1)
        else:
            step[:, c:c + g] = (w.amax(1, keepdim=True).clamp(min=0) - w.amin(1, keepdim=True).clamp(max=0)) \
                / (2 ** bits - 1)
    return step


def _round_to_nearest(W, bits, group_size, symmetric):
    """RTN written here: every weight moves to the nearest point of its group's grid (at most
    half a step)."""
    step = _grid_step(W, bits, group_size, symmetric)
    if symmetric:
        return (W / step).round().clamp(-2 ** (bits - 1), 2 ** (bits - 1) - 1) * step
    lo = torch.zeros_like(W)
    g = group_size or W.shape[1]
    for c in range(0, W.shape[1], g):
        lo[:, c:c + g] = W[:, c:c + g].amin(1, keepdim=True).clamp(max=0)
    return ((W - lo) / step).round() * step + lo


def _grid_rounding_error(ref, cfg, x):
    """Output error of `ref` when only its block linears' weights are rounded to nearest on the
    config's grid: the error a correct grid of that step gives."""
    rounded = copy.deepcopy(ref)
    with torch.no_grad():
        for n in rounded.arch.linears:
            lin = get_module(rounded.module, n)
            lin.weight.copy_(_round_to_nearest(lin.weight, cfg["bits"], cfg.get("group_size", 0),
                                               cfg.get("symmetric", True)))
    return _rel_err(rounded, ref, x)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert", "distilbert"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_quantize_stage_every_family(tiny, family, name):
    model = copy.deepcopy(tiny[family])
    log = quantize_model(model, QuantizeConfig(**CONFIGS[name]), CAL, progress=False)
    assert not log.simulated and sum(log.kernels.values()) == len(model.arch.linears)
    assert all(isinstance(get_module(model.module, n), QuantLinear) for n in model.arch.linears)
    x = torch.randint(5, 300, (2, 12))
    cfg = CONFIGS[name]
    if cfg.get("activations"):  # int8 activations add their own rounding: a plain bound
        assert _rel_err(model, tiny[family], x) < 0.05
    else:  # weight-only: GPTQ / AWQ / full range measured 0.5x - 1.35x plain RTN on this grid
        # (a step twice too large, or an off-by-one zero point, gives 2x - 4x)
        assert _rel_err(model, tiny[family], x) < 1.6 * _grid_rounding_error(tiny[family], cfg, x)
    if cfg["method"] == "rtn" and not cfg.get("smoothquant"):  # each weight within half a step of the grid's
        for n in model.arch.linears:
            W = get_module(tiny[family].module, n).weight
            step = _grid_step(W, cfg["bits"], cfg.get("group_size", 0), cfg.get("symmetric", True))
            err = (get_module(model.module, n).dequantized() - W).abs()
            assert bool((err <= step / 2 + 1e-6).all()), (n, float((err / step).max()))
    emb = model.arch.embeddings[0]
    assert torch.equal(get_module(model.module, emb).weight, get_module(tiny[family].module, emb).weight)


def test_gptq_beats_rtn_on_a_model(tiny):
    """On held-out real text (WikiText-2 test), after calibrating on enough validation tokens
    (16 x 64 for 64-96 input channels: with fewer, GPTQ fits the calibration tokens only)."""
    from conftest import DATA
    model0 = tiny["llama"]
    text = (DATA / "wikitext2" / "wiki.test.raw").read_text()[:20000]
    x = model0.tokenizer(text, return_tensors="pt")["input_ids"][:, :256].view(4, 64)
    errs = {}
    for method in ("rtn", "gptq"):
        model = copy.deepcopy(model0)
        quantize_model(model, QuantizeConfig(method=method, bits=3, group_size=32),
                       {"samples": 16, "seq_len": 64}, progress=False)
        errs[method] = _rel_err(model, model0, x)
    assert errs["gptq"] < errs["rtn"]


def test_smoothing_folded_into_norms_keeps_the_function(tiny):
    """SmoothQuant's scales alone (8-bit grids fine enough to be nearly exact) leave outputs unchanged."""
    model = copy.deepcopy(tiny["llama"])
    log = quantize_model(model, QuantizeConfig(bits=8, smoothquant=0.8, kernel="simulated"), CAL, progress=False)
    assert log.scales and log.simulated
    x = torch.randint(5, 300, (2, 12))
    assert _rel_err(model, tiny["llama"], x) < 0.02
    norm = model.arch.blocks[0].attn_norm
    assert not torch.equal(get_module(model.module, norm).weight, get_module(tiny["llama"].module, norm).weight)


def test_lm_head_quantized_on_request_unties_the_embeddings(tiny, tmp_path):
    model = copy.deepcopy(tiny["gpt2"])
    assert model.arch.tied_head
    quantize_model(model, QuantizeConfig(bits=8, activations="dynamic", lm_head=True), CAL, progress=False)
    assert isinstance(get_module(model.module, model.arch.head), QuantLinear)
    emb = model.arch.embeddings[0]
    assert torch.equal(get_module(model.module, emb).weight, get_module(tiny["gpt2"].module, emb).weight)
    save(model, tmp_path / "q")
    again = load(tmp_path / "q")
    x = torch.randint(5, 300, (1, 10))
    with torch.no_grad():
        assert torch.equal(again.module(x).logits, model.module(x).logits)


def test_prune_then_quantize_keeps_zeros(tiny):
    model = copy.deepcopy(tiny["llama"])
    prune_model(model, PruneConfig(method="wanda", pattern="2:4"), CAL, progress=False)
    quantize_model(model, QuantizeConfig(method="gptq", bits=4, group_size=32, symmetric=False), CAL,
                   progress=False)
    assert {n for n, _ in model.masks.items()} == set(model.arch.linears)
    for name, keep in model.masks.items():
        assert keep.view(keep.shape[0], -1, 4).sum(-1).le(2).all()  # 2:4: at most 2 kept of every 4
        assert bool((get_module(model.module, name).dequantized()[~keep] == 0).all())
    # Quantized layers hold their zeros as codes equal to the zero point: re-applying the masks
    # (as recover does after every step) finds no dense weight to touch and changes nothing.
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    x = torch.randint(5, 300, (2, 12))
    with torch.no_grad():
        out = model.module(x).logits
    model.apply_masks()
    after = model.module.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        assert torch.equal(model.module(x).logits, out)
    for name, keep in model.masks.items():
        assert bool((get_module(model.module, name).dequantized()[~keep] == 0).all())


@pytest.mark.parametrize("family,cfg", [
    ("llama", dict(method="gptq", bits=4, group_size=64, symmetric=False)),  # 96 = 64 + 32: ragged group
    ("llama", dict(method="awq", bits=4, group_size=32, lm_head=True)),
    ("gpt2", dict(method="rtn", bits=8, activations="dynamic")),
    ("bert", dict(method="rtn", bits=8, activations="static", smoothquant=0.5)),
    ("distilbert", dict(method="rtn", bits=8)),
    ("llama", dict(method="rtn", bits=3, group_size=32)),  # simulated
    ("llama", dict(method="gptq", bits=4, group_size=32, full_range=True)),  # negative scales
])
def test_saved_quantized_model_reloads_bit_identical(tiny, family, cfg, tmp_path):
    model = copy.deepcopy(tiny[family])
    quantize_model(model, QuantizeConfig(**cfg), CAL, progress=False)
    dense = save(tiny[family], tmp_path / "dense")
    save(model, tmp_path / "q")
    again = load(tmp_path / "q")
    x = torch.randint(5, 300, (2, 11))
    with torch.no_grad():
        assert torch.equal(again.module(x)[0], model.module(x)[0])
    for name in model.arch.linears:
        a, b = get_module(model.module, name), get_module(again.module, name)
        assert a.describe() == b.describe() and torch.equal(a.qweight, b.qweight)
    meta = json.loads((tmp_path / "q" / "slimformer.json").read_text())
    described = meta["modules"]  # every compressed module, by name, with its registered type
    assert set(described) >= set(model.arch.linears)
    assert {described[n]["type"] for n in model.arch.linears} == {"quant_linear"}
    assert described[model.arch.linears[0]]["bits"] == cfg["bits"]
    size = lambda d: sum(p.stat().st_size for p in d.glob("*.safetensors"))
    linear_bytes = sum(get_module(tiny[family].module, n).weight.numel() * 4 for n in model.arch.linears)
    saved = 1 - (cfg["bits"] / 8 if cfg["bits"] == 8 else 0.5) / 4  # int4/int3 codes are nibbles
    assert size(dense) - size(tmp_path / "q") > 0.9 * saved * linear_bytes
    with pytest.raises(OSError):
        T.AutoModel.from_pretrained(tmp_path / "q")


@pytest.mark.parametrize("opts,match", [
    ({"method": "hqq"}, "methods: rtn, gptq, awq"),
    ({"bits": 5}, "8, 7, 4 or 3"),
    ({"group_size": 100}, "group_size must be one of"),
    ({"bits": 4, "activations": "dynamic"}, "int8 activations need"),
    ({"smoothquant": 1.5}, r"in \[0, 1\]"),
    ({"method": "awq", "smoothquant": 0.5}, "not both"),
    ({"kernel": "fast"}, "auto or simulated"),
    ({"granularity": "row", "activations": "dynamic"}, "auto, token or tensor"),
    ({"bitz": 4}, "unknown option 'bitz'"),
])
def test_quantize_recipe_errors(opts, match):
    with pytest.raises(RecipeError, match=match):
        parse_recipe({"stages": [{"quantize": opts}]})


def test_quantize_through_compress_names_simulated_layers(tiny, tmp_path):
    recipe = {"calibration": {"samples": 4, "seq_len": 32},
              "stages": [{"quantize": {"method": "rtn", "bits": 3, "group_size": 32}}],
              "evaluate": {"seq_len": 32, "max_windows": 2},
              "bench": {"batch_sizes": [1], "seq_lens": [16], "repeats": 1, "warmup": 0, "throughput_items": 2,
                        "throughput_seq_len": 32, "decode_new_tokens": 4, "decode_repeats": 1}}
    r = compress(tiny["llama"], recipe, out=tmp_path / "run", progress=False)
    assert r.stages[0].simulated
    report = (tmp_path / "run" / "report.md").read_text()
    assert "simulated" in report.lower()
    assert r.speed["ratios"]["size"] < 0.6


def test_granularity_auto_and_per_tensor_kernel(tiny):
    enc, dec = copy.deepcopy(tiny["bert"]), copy.deepcopy(tiny["llama"])
    assert quantize_model(enc, QuantizeConfig(activations="dynamic", lm_head=True), CAL,
                          progress=False).granularity == "tensor"
    assert quantize_model(dec, QuantizeConfig(activations="dynamic"), CAL, progress=False).granularity == "token"
    lin = get_module(enc.module, enc.arch.linears[0])
    sim = copy.deepcopy(lin)
    sim.kernel, sim._cache = "simulated", {}
    sim.unlink()  # alone, not through the (copied) q/k/v group
    x = torch.randn(3, 7, lin.in_features)
    torch.testing.assert_close(lin(x), sim(x), rtol=1e-4, atol=1e-4)  # one range per call (fbgemm, or int8_per_tensor without VNNI)


# ---- q/k/v and gate/up as one kernel call (input_groups.py) ----------------------------------------

def _unlinked_outputs(model, x):
    """The model's output with every layer running alone (the reference for the fused groups)."""
    alone = copy.deepcopy(model)
    for name in alone.arch.linears:
        get_module(alone.module, name).unlink()
    with torch.no_grad():
        return alone.module(x)[0]


@pytest.mark.parametrize("family", ["llama", "bert", "distilbert"])
@pytest.mark.parametrize("cfg", [dict(bits=8, activations="dynamic"), dict(bits=8, activations="dynamic",
                                 smoothquant=0.5, granularity="tensor"),
                                 dict(bits=8, activations="static", smoothquant=0.5), dict(bits=8),
                                 dict(bits=4, group_size=32, symmetric=False)])
def test_shared_input_groups_compute_what_the_layers_compute_alone(tiny, family, cfg):
    model = copy.deepcopy(tiny[family])
    log = quantize_model(model, QuantizeConfig(**cfg), CAL, progress=False)
    # q/k/v in every block; gate/up too where the FFN is gated
    assert log.fused_input_groups == len(model.arch.blocks) * (2 if model.arch.blocks[0].ffn.gated else 1)
    x = torch.randint(5, 300, (2, 9))
    with torch.no_grad():
        fused = model.module(x)[0]
    alone = _unlinked_outputs(model, x)
    if cfg.get("bits") == 4:  # bf16 activations: the kernel may split a wider GEMM differently
        torch.testing.assert_close(fused, alone, rtol=1e-3, atol=1e-3)
    else:  # integer GEMM columns are independent: exactly the same numbers
        assert torch.equal(fused, alone)


def test_shared_input_group_reuses_only_the_same_unchanged_input(tiny):
    model = copy.deepcopy(tiny["llama"])
    quantize_model(model, QuantizeConfig(bits=8, activations="dynamic"), CAL, progress=False)
    attn = model.arch.blocks[0].attn
    q, k, v = (get_module(model.module, n) for n in (attn.q, attn.k, attn.v))
    alone = {n: copy.deepcopy(m) for n, m in (("q", q), ("k", k), ("v", v))}
    for m in alone.values():
        m.unlink()
    calls, group = [], q._group
    stacked = group._stacked()
    group._stacked = lambda: (lambda x: calls.append(1) or stacked(x))  # count kernel calls
    x = torch.randn(3, 5, q.in_features)
    assert torch.equal(q(x), alone["q"](x)) and torch.equal(k(x), alone["k"](x))
    assert len(calls) == 1  # k took its columns of q's call
    x.mul_(2)  # changed in place: v must not read the stale output
    assert torch.equal(v(x), alone["v"](x)) and len(calls) == 2
    assert torch.equal(q(x.clone()), alone["q"](x)) and len(calls) == 3  # another tensor: computed anew
    assert group._x is not None  # k and v have not read this one yet; after both, nothing is held
    k(group._x), v(group._x)
    assert group._x is None and group._y is None and len(calls) == 3


@pytest.mark.parametrize("name", ["default.yaml", "quantize-gptq-int4.yaml", "quantize-awq-int4.yaml",
                                  "quantize-w8a8-static.yaml", "export-gguf-q4_k_m.yaml"])
def test_bundled_quantize_recipes_parse(name):
    from slimformer.recipe import default_recipe_path, load_recipe
    recipe = load_recipe(default_recipe_path().parent / name)
    assert recipe.stages and recipe.stages[0].name == "quantize"
