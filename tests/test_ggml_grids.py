"""GGML grids (legacy q4_0 ... q5_1 and the K-quants q4_k / q5_k / q6_k): the bytes against the gguf
package's dequantizer, the scale choice against llama.cpp's reference rounding, GPTQ on a fixed
grid against the paper's column loop written here, and the quantize stage + GGUF export in
llama.cpp."""
from __future__ import annotations

import copy

import gguf
import numpy as np
import pytest
import torch

from conftest import random_llama
from slimformer.errors import ConfigValueError
from slimformer.export import export
from slimformer.export.gguf_tensors import rotary_order
from slimformer.model import get_module, load, save
from slimformer.nn import GgmlLinear
from slimformer.nn.ggml_blocks import pack
from slimformer.nn.ggml_grid import choose_grid
from slimformer.nn.ggml_types import TYPES, type_for_width
from slimformer.quant import QuantizeConfig, quantize_model
from slimformer.quant.methods import gptq
from slimformer.runtime import open_model

import llama_cpp  # noqa: F401,E402  (a dependency: its absence is a failure, not a skip)

CAL = {"samples": 4, "seq_len": 32}
LEGACY = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1")


def _qtype(name):
    return getattr(gguf.GGMLQuantizationType, name.upper())


def _weights(rows=6, cols=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g) * 0.05
    W[0, :32] = 0  # an all-zero sub-block: zero scale
    W[1, 32:64] = -W[1, 32:64].abs()  # one-sided sub-blocks (the min at the edge)
    W[2, 64:96] = W[2, 64:96].abs() + 0.1
    W[3, 5] = 1.0  # an outlier
    return W


@pytest.mark.parametrize("name", list(TYPES))
def test_blocks_are_what_the_gguf_dequantizer_reads(name):
    t = TYPES[name]
    W = _weights()
    for importance in (None, torch.rand(W.shape[1], generator=torch.Generator().manual_seed(1))):
        grid = choose_grid(W, t, importance)
        u = grid.quantize(W)
        assert int(u.min()) >= t.umin and int(u.max()) <= t.umax
        data = pack(u, t, grid.stored)
        assert data.shape == (W.shape[0], t.row_bytes(W.shape[1]))
        ref = gguf.quants.dequantize(data, _qtype(name))
        assert np.array_equal(ref, grid.dequantize(u).numpy())  # bit for bit
        # rounding on the grid: every weight within half a step of its value (clipping aside)
        back = grid.dequantize(u)
        s, _ = grid.columns(0, W.shape[1])
        inside = (back - W).abs() <= s.abs() / 2 * (1 + 1e-5) + 1e-7
        # 2 and 3 bits clip more (4-bit mins; least-squares scales trade clipping for finer steps)
        assert float(inside.float().mean()) > (0.95 if t.levels <= 4 else 0.97 if t.levels <= 8 else 0.98)
        assert torch.equal(back[0, :32], torch.zeros(32))  # the zero sub-block stays exactly zero


@pytest.mark.parametrize("name", LEGACY)
def test_scale_search_beats_llama_cpps_reference_rounding(name):
    """llama.cpp's reference quantizer (the gguf package's port of it) sets each block's scale
    from its extremes; the search here, weighted by the importance of each column, must give a
    smaller importance-weighted error, the quantity the model's output error follows."""
    W = torch.randn(64, 512, generator=torch.Generator().manual_seed(3)) * 0.05
    h = torch.rand(512, generator=torch.Generator().manual_seed(4)) ** 4  # a few columns matter most
    ref = torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(W.numpy(), _qtype(name)), _qtype(name)))
    grid = choose_grid(W, TYPES[name], h)
    ours = grid.dequantize(grid.quantize(W))
    err = lambda back: float((((back - W) ** 2) * h).sum())  # noqa: E731
    assert err(ours) < 0.97 * err(ref)


def _reference_gptq(W, H, grid, damp=0.01):
    """GPTQ's column loop as the paper writes it (no lazy blocks): quantize column i, spread its
    error over the later columns through the upper Cholesky factor of H^-1."""
    W = W.double().clone()
    H = H.double().clone()
    H += damp * H.diag().mean() * torch.eye(H.shape[0], dtype=H.dtype)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    for i in range(W.shape[1]):
        s, b = grid.columns(i, i + 1)
        w = W[:, i:i + 1].float()
        q = grid.value(grid.codes(w, s, b), s, b).double()
        Q[:, i:i + 1] = q
        e = (W[:, i:i + 1] - q) / U[i, i]
        W[:, i:] -= e @ U[i:i + 1, i:]
    return grid.quantize(Q.float())


@pytest.mark.parametrize("name", ["q4_k", "q6_k", "q3_k", "q5_0"])
def test_gptq_on_a_fixed_grid_is_the_papers_loop_and_beats_rounding(name):
    g = torch.Generator().manual_seed(5)
    X = torch.randn(512, 256, generator=g) @ (torch.eye(256) + 0.3 * torch.randn(256, 256, generator=g))
    H = (2 * X.T @ X / X.shape[0]).double()
    W = torch.randn(16, 256, generator=g) * 0.05
    grid = choose_grid(W, TYPES[name], torch.diag(H).float())
    res = gptq(W, H.clone(), None, blocksize=64, grid=grid)
    assert res.scales is None
    ref = _reference_gptq(W, H, grid)
    assert float((res.q == ref).float().mean()) > 0.99  # float order differs between the two loops
    out_err = lambda u: float(((grid.dequantize(u) - W) @ X.T).pow(2).sum())  # noqa: E731
    assert out_err(res.q) < 0.8 * out_err(grid.quantize(W))


def _reference_basis(grid, u, row):
    """The dequantized row as a linear map of its fp16 numbers, written from the block formulas:
    legacy w = d (u - z) [+ m] per 32 columns; K-quants w = d sc (u - z) [- dmin m] per 256."""
    t, st = grid.type, grid.stored
    cols = u.shape[1]
    q = u[row].double() - t.zero
    per = t.block
    sub = torch.arange(cols) // t.sub
    cols_of = lambda g: (torch.arange(cols) // per) == g  # noqa: E731
    d_col = q if not t.super_scales else st["sc"][row].double()[sub] * q
    basis = [torch.where(cols_of(g), d_col, 0.0) for g in range(cols // per)]
    if t.affine:
        m_col = torch.ones(cols, dtype=torch.float64) if not t.super_scales else -st["m"][row].double()[sub]
        basis += [torch.where(cols_of(g), m_col, 0.0) for g in range(cols // per)]
    return torch.stack(basis, 1)  # [cols, numbers]


@pytest.mark.parametrize("name", ["q4_0", "q4_1", "q4_k", "q6_k"])
def test_refit_is_the_least_squares_fit_of_the_output_error(name):
    """Given GPTQ's codes, the refit fp16 numbers of each row are the least-squares solution of
    || X (w - A theta) ||^2 (solved here by lstsq on X A), rounded to fp16, and lower the error."""
    from slimformer.quant.ggml_refit import output_error, refit_grid
    g = torch.Generator().manual_seed(7)
    X = torch.randn(1024, 512, generator=g) @ (torch.eye(512) + 0.2 * torch.randn(512, 512, generator=g))
    H = (X.T @ X).double()
    W = torch.randn(8, 512, generator=g) * 0.05
    grid = choose_grid(W, TYPES[name], torch.diag(H).float())
    u = gptq(W, H.clone(), None, grid=grid).q
    fitted = refit_grid(W, H, u, grid)
    before = output_error(W, grid.dequantize(u), H)
    after = output_error(W, fitted.dequantize(u), H)
    assert bool((after <= before).all()) and float(after.sum()) < float(before.sum())
    keys = ["d", "m"] if not TYPES[name].super_scales else ["d", "dmin"]
    keys = keys if TYPES[name].affine else ["d"]
    for row in range(W.shape[0]):
        A = _reference_basis(grid, u, row)
        theta = torch.linalg.lstsq(X.double() @ A, X.double() @ W[row].double()[:, None]).solution[:, 0]
        ours = torch.cat([fitted.stored[k][row].double() for k in keys])
        assert torch.allclose(ours, theta.to(torch.float16).double(), rtol=2e-3, atol=1e-7), row
        # and the fitted numbers are what the grid dequantizes with: A theta is the row it computes
        assert torch.allclose(fitted.dequantize(u)[row].double(), A @ ours, rtol=1e-5, atol=1e-7)


def test_refit_rounds_lower_the_models_kl(wide):
    """ggml_refit (the default) against ggml_refit 0: the same GPTQ model, closer to the original."""
    from slimformer.data.calibration import calibration_set
    batches = calibration_set(wide, **CAL).batches
    kls = {}
    for rounds in (0, 2):
        m = copy.deepcopy(wide)
        quantize_model(m, QuantizeConfig(method="gptq", ggml="q4_0", ggml_refit=rounds), CAL, progress=False)
        with torch.no_grad():
            kls[rounds] = sum(float((p.exp() * (p - q)).sum(-1).mean()) for p, q in
                              ((torch.log_softmax(wide.module(**b).logits.float(), -1),
                                torch.log_softmax(m.module(**b).logits.float(), -1)) for b in batches))
    assert kls[2] < 0.97 * kls[0], kls


def test_k_quants_fall_back_as_llama_cpp_does():
    assert type_for_width("q4_k", 576).name == "q5_0"
    assert type_for_width("q5_k", 640).name == "q5_1"
    assert type_for_width("q6_k", 576).name == "q8_0"
    assert type_for_width("q4_k", 1536).name == "q4_k"
    assert type_for_width("q3_k", 576).name == type_for_width("q2_k", 576).name == "q4_0"
    with pytest.raises(ConfigValueError, match="multiples of 32"):
        type_for_width("q4_0", 100)
    with pytest.raises(ConfigValueError, match="unknown"):
        type_for_width("q4_k_x", 256)


@pytest.fixture(scope="module")
def wide(tiny_dir, tmp_path_factory):
    """A tiny Llama whose widths fill 256-column super-blocks (hidden 256, FFN 512)."""
    return random_llama(tiny_dir, tmp_path_factory, hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=512)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMFORMER_CACHE", str(tmp_path / "cache"))


def _logits(model, ids):
    with torch.no_grad():
        return model.module(input_ids=ids).logits.float()


def test_gptq_k_quants_go_into_the_gguf_exactly_and_run_in_llama_cpp(wide, tmp_path):
    model = copy.deepcopy(wide)
    cfg = QuantizeConfig(method="gptq", ggml="q4_k", ggml_types={r"mlp\.down_proj": "q6_k", r"v_proj": "q5_k"})
    log = quantize_model(model, cfg, CAL, progress=False)
    assert log.ggml_types == {"q4_k": 10, "q6_k": 2, "q5_k": 2} and log.format == "ggml q4_k"
    res = export(model, "gguf", tmp_path / "k.gguf", dtype="f32")
    assert res.details["exact_codes"] == len(model.arch.linears) == 14
    tensors = {t.name: t for t in gguf.GGUFReader(str(tmp_path / "k.gguf")).tensors}
    blk = model.arch.blocks[1]
    a = blk.attn
    for gguf_name, module_name, kind, order in [
            ("blk.1.ffn_down.weight", blk.ffn.down, "Q6_K", None), ("blk.1.attn_v.weight", a.v, "Q5_K", None),
            ("blk.1.ffn_gate.weight", blk.ffn.gate, "Q4_K", None),
            ("blk.1.attn_q.weight", a.q, "Q4_K", rotary_order(a.n_heads * a.head_dim, a.n_heads))]:
        t = tensors[gguf_name]
        mod = get_module(model.module, module_name)
        assert isinstance(mod, GgmlLinear) and t.tensor_type.name == kind
        w = mod.dequantized()
        w = w[order] if order is not None else w
        assert np.array_equal(gguf.quants.dequantize(np.array(t.data), t.tensor_type), w.numpy())
    ids = torch.randint(5, 380, (1, 40), generator=torch.Generator().manual_seed(2))
    ref, got = _logits(model, ids), _logits(open_model(str(tmp_path / "k.gguf")), ids)
    # llama.cpp multiplies K-quant blocks with 8-bit-quantized activations (Q8_K): close, not equal
    assert float((ref - got).norm() / ref.norm()) < 0.05


def test_ggml_model_saves_and_reloads_bit_identical(wide, tmp_path):
    model = copy.deepcopy(wide)
    quantize_model(model, QuantizeConfig(method="rtn", ggml="q5_k", lm_head=True), progress=False)
    save(model, tmp_path / "m")
    back = load(tmp_path / "m")
    for name in model.arch.linears + [model.arch.head]:
        a, b = get_module(model.module, name), get_module(back.module, name)
        assert isinstance(b, GgmlLinear) and torch.equal(a.dequantized(), b.dequantized())
    ids = torch.randint(5, 380, (1, 24), generator=torch.Generator().manual_seed(3))
    assert torch.equal(_logits(model, ids), _logits(back, ids))


def test_narrow_rows_take_llama_cpps_fallbacks(tiny, tmp_path):
    model = copy.deepcopy(tiny["llama"])  # hidden 64, FFN 96: no 256-column super-block
    log = quantize_model(model, QuantizeConfig(method="gptq", ggml="q4_k"), CAL, progress=False)
    assert log.ggml_types == {"q5_0": 14}
    export(model, "gguf", tmp_path / "f.gguf", dtype="f32")
    kinds = {t.tensor_type.name for t in gguf.GGUFReader(str(tmp_path / "f.gguf")).tensors if "blk." in t.name
             and t.name.endswith(("q.weight", "k.weight", "v.weight", "down.weight", "up.weight"))}
    assert kinds == {"Q5_0"}


@pytest.mark.parametrize("bad,match", [
    (dict(ggml="q4_kk"), "unknown"), (dict(method="awq", ggml="q4_k"), "rtn or gptq"),
    (dict(ggml="q4_k", activations="dynamic"), "int8|weight-only"), (dict(ggml_types={"down": "q6_k"}), "needs ggml"),
    (dict(ggml="q4_k", ggml_types={"(": "q6_k"}), "regex"), (dict(ggml_bpw=1.0), r"\[2, 8.5\]"),
    (dict(ggml_bpw=4.5, ggml_ladder=["q4_x"]), "unknown"), (dict(ggml="q4_0", ggml_refit=-1), "ggml_refit"),
    (dict(ggml="q4_0", ggml_types={"(": "q6_k"}), "ggml_types regex")])
def test_bad_ggml_options_are_one_line_errors(bad, match):
    with pytest.raises(ConfigValueError, match=match):
        QuantizeConfig(**bad).validate()


def test_ggml_layer_refuses_onnx(tiny, tmp_path):
    model = copy.deepcopy(tiny["llama"])
    quantize_model(model, QuantizeConfig(method="rtn", ggml="q8_0"), progress=False)
    with pytest.raises(Exception, match="gguf"):
        export(model, "onnx", tmp_path / "m.onnx")


def test_distillation_on_the_ggml_grid_keeps_the_blocks_and_lowers_the_kl(tiny, tmp_path):
    """recover on a GGML-quantized model trains on the same fixed grid (step 0 = the quantized
    model) and returns GgmlLinear layers with the same stored scales and mins, so the GGUF holds
    the trained codes exactly."""
    from slimformer.data import bundled_path
    from slimformer.recover import RecoverConfig, recover
    from slimformer.recover.data import build_train_set
    from slimformer.recover.qat import to_fake
    original = copy.deepcopy(tiny["llama"])
    with torch.no_grad():  # a peaked teacher: the KL of a coarse grid is large enough to fall
        original.module.get_submodule(original.arch.head).weight.mul_(30.0)
    student = copy.deepcopy(original)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # a damaged student (noise of the weights' own size): much to win back
        for name in student.arch.linears:
            w = student.module.get_submodule(name).weight
            w.add_(torch.randn(w.shape, generator=g) * w.std())
    quantize_model(student, QuantizeConfig(method="rtn", ggml="q4_0"), progress=False)
    stored = {n: m.d.clone() for n, m in student.module.named_modules() if isinstance(m, GgmlLinear)}
    codes = {n: m.codes.clone() for n, m in student.module.named_modules() if isinstance(m, GgmlLinear)}
    text = tmp_path / "few.txt"
    text.write_text(bundled_path("wikitext2", "validation").read_text()[:3000])
    ids = build_train_set(original, [str(text)], 32, 2).examples
    fake = copy.deepcopy(student)
    to_fake(fake)
    kl = lambda m: float(torch.nn.functional.kl_div(  # noqa: E731
        torch.log_softmax(_logits(m, ids), -1), torch.log_softmax(_logits(original, ids), -1),
        log_target=True, reduction="batchmean"))
    assert torch.allclose(_logits(fake, ids), _logits(student, ids), atol=1e-5)
    before = kl(student)
    cfg = RecoverConfig(steps=30, batch_size=4, seq_len=32, holdout=2, lr=5e-4, eval_every=10, eval="heldout",
                        data=[str(text)], restore_best=False)
    log = recover(student, original, cfg, progress=False)
    assert log.qat_layers == len(stored)
    for name, d in stored.items():
        mod = student.module.get_submodule(name)
        assert isinstance(mod, GgmlLinear) and torch.equal(mod.d, d)
    # training moved codes (the stored scales above are kept by construction; the codes are not)
    assert sum(int((student.module.get_submodule(n).codes != c).sum()) for n, c in codes.items()) > 0
    assert kl(student) < 0.7 * before
    export(student, "gguf", tmp_path / "r.gguf", dtype="f32")
    t = {t.name: t for t in gguf.GGUFReader(str(tmp_path / "r.gguf")).tensors}["blk.0.ffn_down.weight"]
    down = student.module.get_submodule(student.arch.blocks[0].ffn.down)
    assert np.array_equal(gguf.quants.dequantize(np.array(t.data), t.tensor_type), down.dequantized().numpy())


def test_gradual_pruning_is_refused_on_ggml_grids(tiny):
    """Pruned weights must stay zero, which affine GGML grids cannot promise: refused before any work."""
    from slimformer.recover import RecoverConfig, recover
    student = copy.deepcopy(tiny["llama"])
    quantize_model(student, QuantizeConfig(method="rtn", ggml="q4_k"), progress=False)
    with pytest.raises(ConfigValueError, match="prune_to"):
        recover(student, tiny["llama"], RecoverConfig(steps=4, prune_to=0.5), progress=False)


def test_size_target_allocates_types_from_measured_sensitivity(wide, tmp_path):
    model = copy.deepcopy(wide)
    cal = {"samples": 2, "seq_len": 32}
    log = quantize_model(model, QuantizeConfig(method="gptq", ggml_bpw=5.0, ggml_probe=2), cal, progress=False)
    types, sens = log.allocated["types"], log.allocated["sensitivity"]
    sizes = {n: get_module(model.module, n).in_features * get_module(model.module, n).out_features for n in types}
    bits = sum(TYPES[t].bpw * sizes[n] for n, t in types.items()) / sum(sizes.values())
    assert bits <= 5.0 and log.allocation["bpw"] == pytest.approx(bits, abs=1e-3)
    assert len(set(types.values())) > 1  # a mix, not one type
    assert bits > 5.0 - 1.1  # no upgrade that fitted was left unspent (the largest step is q6_k -> q8_0)
    for n, t in types.items():
        assert get_module(model.module, n).type.name == t
    # a sensitivity is the KL when that linear alone is rounded onto the type: recomputed here
    from slimformer.data.calibration import calibration_set
    name = model.arch.blocks[0].ffn.down
    batches = calibration_set(wide, **cal).batches[:2]
    probe = copy.deepcopy(wide)
    lin = get_module(probe.module, name)
    grid = choose_grid(lin.weight.detach(), TYPES["q3_k"])
    with torch.no_grad():
        lin.weight.copy_(grid.dequantize(grid.quantize(lin.weight.detach())))
        kl = 0.0
        for b in batches:
            p = torch.log_softmax(wide.module(**b).logits.float(), -1)
            q = torch.log_softmax(probe.module(**b).logits.float(), -1)
            kl += float((p.exp() * (p - q)).sum(-1).mean()) / len(batches)
    assert sens[name]["q3_k"] == pytest.approx(kl, rel=1e-4)
    assert all(s["q8_0"] <= s["q3_k"] for s in sens.values())
    with pytest.raises(ConfigValueError, match="below the cheapest"):
        quantize_model(copy.deepcopy(wide), QuantizeConfig(method="rtn", ggml_bpw=3.0, ggml_ladder=["q4_k", "q6_k"]),
                       cal, progress=False)
