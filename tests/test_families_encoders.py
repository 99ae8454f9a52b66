"""Encoder families beyond BERT (MPNet, ModernBERT) and the sentence-transformers modules after
pooling (Dense, Normalize): ArchMaps against the modules, surgery against zeroing, prune /
quantize / save on tiny random models, embeddings against a hand computation, and ONNX exports
of every encoder family against PyTorch in ONNX Runtime on STS-B sentences."""
from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
import transformers as T
from safetensors.torch import save_file
from torch import nn

from slimformer import load, save
from slimformer.data.bundled import bundled_path
from slimformer.data.readers import read_pairs
from slimformer.errors import ConfigValueError, CorruptModelError, UnsupportedModelError
from slimformer.evaluate.embed import encode, pool
from slimformer.model import get_module
from slimformer.model.families import exports_for
from slimformer.nn.quant_linear import QuantLinear
from slimformer.prune import PruneConfig, prune_model
from slimformer.quant import QuantizeConfig, quantize_model
from slimformer.trim import TrimConfig, trim_model
from slimformer.trim.layers import skipped
from slimformer.trim.surgery import drop_blocks, refresh, trim_ffn, trim_heads

from conftest import POSITIONS, VOCAB

CAL = {"samples": 4, "seq_len": 32}
WINDOW = 8  # ModernBERT's half window (local_attention 16): STS-B sentences are longer than 2 * 8 + 1
NEW = ("mpnet", "modernbert")


def configs() -> dict[str, T.PretrainedConfig]:
    common = dict(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                  hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96)
    return {
        # MPNet counts positions after its padding id 1: 2 + POSITIONS entries
        "mpnet": T.MPNetConfig(max_position_embeddings=POSITIONS + 2, **common),
        # layer 0 global, layer 1 local (global_attn_every_n_layers 3); no biases, as released
        "modernbert": T.ModernBertConfig(max_position_embeddings=POSITIONS, local_attention=2 * WINDOW,
                                         cls_token_id=1, sep_token_id=2, **common),
    }


@pytest.fixture(scope="module")
def folders(tiny_dir, tmp_path_factory):
    """name -> folder of a tiny random model (mpnet, modernbert; bert and distilbert from conftest)."""
    root = tmp_path_factory.mktemp("encoders")
    tok = T.AutoTokenizer.from_pretrained(tiny_dir["bert"])
    tok.model_input_names = ["input_ids", "attention_mask"]  # as the real MPNet / ModernBERT tokenizers
    out = {"bert": tiny_dir["bert"], "distilbert": tiny_dir["distilbert"]}
    for name, cfg in configs().items():
        torch.manual_seed(0)
        module = T.AutoModel.from_config(cfg).eval()
        with torch.no_grad():  # weights of a trained model's scale (an init of std 0.02 leaves the FFNs
            # and the position bias too small to show in the outputs), random norms and biases
            for n, p in module.named_parameters():
                if "norm" in n.lower() or n.endswith("bias"):
                    p.add_(torch.randn_like(p) * 0.1)
                elif n.endswith("relative_attention_bias.weight"):
                    p.normal_(0, 1.0)
                elif p.dim() == 2 and "embeddings" not in n:
                    p.normal_(0, p.shape[1] ** -0.5)
        module.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def models(folders):
    return {name: load(folders[name]) for name in NEW}


def _ids(seed=0, n=2, s=24):
    return torch.randint(3, 300, (n, s), generator=torch.Generator().manual_seed(seed))


def _out(model, ids, mask=None):
    with torch.no_grad():
        return model.module(input_ids=ids, attention_mask=mask).last_hidden_state


def sentences(n=24) -> list[str]:
    pairs = read_pairs(bundled_path("stsb", "dev"))[:n // 2]
    return [s for p in pairs for s in (p.a, p.b)]


# ---------------------------------------------------------------- ArchMap

@pytest.mark.parametrize("family", NEW)
def test_arch_map_finds_every_projection_with_its_shape(models, family):
    model = models[family]
    arch, root = model.arch, model.module
    linears = {n for n, m in root.named_modules() if isinstance(m, nn.Linear)}
    assert set(arch.linears) | ({arch.pooler} if arch.pooler else set()) == linears
    for blk in arch.blocks:
        a, f = blk.attn, blk.ffn
        assert (a.n_heads, a.head_dim, f.width) == (4, 16, 96)
        shapes = {n: tuple(get_module(root, n).weight.shape) for n in blk.linears}
        if family == "mpnet":
            assert [shapes[n] for n in (a.q, a.k, a.v, a.o)] == [(64, 64)] * 4
            assert (shapes[f.up], shapes[f.down]) == ((96, 64), (64, 96)) and not f.gated
        else:
            assert shapes[a.qkv] == (3 * 64, 64) and shapes[a.o] == (64, 64)
            assert (shapes[f.up], shapes[f.down]) == ((2 * 96, 64), (64, 96)) and f.fused_gate_up
        for norm in (blk.attn_norm, blk.ffn_norm):
            if norm is not None:
                assert isinstance(get_module(root, norm), nn.LayerNorm)
    if family == "mpnet":
        assert not any(b.pre_norm for b in arch.blocks) and arch.position_offset == 2
        assert arch.max_positions == POSITIONS
        assert get_module(root, arch.relative_bias.table).weight.shape == (32, 4)
        assert arch.relative_bias.shared and arch.rope is None
    else:
        assert all(b.pre_norm for b in arch.blocks) and arch.final_norm == "final_norm"
        assert arch.blocks[0].attn_norm is None and isinstance(get_module(root, "layers.0.attn_norm"), nn.Identity)
        assert [b.attention_type for b in arch.blocks] == ["full_attention", "sliding_attention"]
        assert (arch.rope.theta, arch.rope.local_theta, arch.sliding_window) == (160000.0, 10000.0, WINDOW)
        assert not arch.norm.bias and get_module(root, arch.final_norm).bias is None
    assert exports_for(arch) == ["hf", "onnx", "openvino"]


def test_relative_buckets_written_for_the_graph_equal_transformers(models):
    from slimformer.export.onnx_encoder import relative_buckets
    from transformers.models.mpnet.modeling_mpnet import MPNetEncoder
    d = torch.arange(-600, 601)
    ours = relative_buckets(d, models["mpnet"].arch.relative_bias)
    assert torch.equal(ours, MPNetEncoder.relative_position_bucket(d))
    # every bucket reached (both signs, exact and logarithmic) but 16: distance 0 counts as negative
    assert set(ours.tolist()) == set(range(32)) - {16}


# ---------------------------------------------------------------- trim

def _zero_heads_and_neurons(model, keep_heads, keep_ffn):
    with torch.no_grad():
        for blk in model.arch.blocks:
            a = blk.attn
            o = get_module(model.module, a.o).weight
            for h in set(range(a.n_heads)) - set(keep_heads):
                o[:, h * a.head_dim:(h + 1) * a.head_dim] = 0
            get_module(model.module, blk.ffn.down).weight[:, sorted(set(range(blk.ffn.width)) - set(keep_ffn))] = 0


def test_modernbert_cutting_heads_and_glu_neurons_equals_zeroing_them(models):
    model, zeroed = copy.deepcopy(models["modernbert"]), copy.deepcopy(models["modernbert"])
    keep_heads, keep_ffn = [0, 2], list(range(0, 96, 3))
    _zero_heads_and_neurons(zeroed, keep_heads, keep_ffn)
    for blk in model.arch.blocks:
        trim_heads(model, blk, keep_heads)
        trim_ffn(model, blk, keep_ffn)
    refresh(model)
    ids, mask = _ids(s=30), torch.ones(2, 30, dtype=torch.long)
    mask[1, 20:] = 0
    torch.testing.assert_close(_out(model, ids, mask), _out(zeroed, ids, mask), rtol=1e-4, atol=1e-5)
    blk = model.arch.blocks[0]
    assert (blk.attn.n_heads, blk.ffn.width) == (2, 32)
    assert get_module(model.module, blk.attn.qkv).weight.shape == (3 * 32, 64)
    assert get_module(model.module, blk.ffn.up).weight.shape == (2 * 32, 64)


def test_mpnet_cutting_neurons_equals_zeroing_them_and_heads_are_refused(models):
    model, zeroed = copy.deepcopy(models["mpnet"]), copy.deepcopy(models["mpnet"])
    keep_ffn = list(range(1, 96, 2))
    _zero_heads_and_neurons(zeroed, range(4), keep_ffn)
    for blk in model.arch.blocks:
        trim_ffn(model, blk, keep_ffn)
    refresh(model)
    ids = _ids()
    torch.testing.assert_close(_out(model, ids), _out(zeroed, ids), rtol=1e-4, atol=1e-5)
    assert model.arch.blocks[1].ffn.width == 48
    with pytest.raises(ConfigValueError, match="relative position bias.*trim ffn, layers"):
        trim_model(copy.deepcopy(models["mpnet"]), TrimConfig(heads=1, score="magnitude"), CAL, progress=False)


@pytest.mark.parametrize("family", NEW)
def test_dropping_a_block_equals_skipping_it(models, family):
    model = copy.deepcopy(models[family])
    ids = _ids()
    with skipped(model, [0]):
        expect = _out(model, ids)
    drop_blocks(model, [0])
    refresh(model)
    torch.testing.assert_close(_out(model, ids), expect)
    assert model.module.config.num_hidden_layers == 1 and model.arch.n_layers == 1


@pytest.mark.parametrize("family", NEW)
def test_trim_stage_uniform_ffn_reloads_in_plain_transformers(models, family, tmp_path):
    model = copy.deepcopy(models[family])
    log = trim_model(model, TrimConfig(ffn=0.25, score="activation"), CAL, progress=False)
    assert log.standard and [b["ffn"] for b in log.blocks] == [72, 72]
    save(model, tmp_path / "t")
    plain = T.AutoModel.from_pretrained(tmp_path / "t").eval()
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids).last_hidden_state, _out(model, ids))


# ---------------------------------------------------------------- prune, quantize, save

@pytest.mark.parametrize("family", NEW)
def test_pruned_and_quantized_models_reload_bit_identically(models, family, tmp_path):
    model = copy.deepcopy(models[family])
    prune_model(model, PruneConfig(method="wanda", sparsity=0.5), CAL, progress=False)
    for name in model.arch.linears:
        w = get_module(model.module, name).weight
        assert abs(float((w == 0).float().mean()) - 0.5) < 0.02 and name in model.masks
    save(model, tmp_path / "p")
    again = load(tmp_path / "p")
    ids = _ids()
    assert torch.equal(_out(again, ids), _out(model, ids))
    quantize_model(model, QuantizeConfig(method="gptq", bits=4, group_size=32), CAL, progress=False)
    assert all(isinstance(get_module(model.module, n), QuantLinear) for n in model.arch.linears)
    for name in model.arch.linears:  # GPTQ keeps the pruned zeros
        assert bool((get_module(model.module, name).dequantized()[~model.masks[name]] == 0).all())
    save(model, tmp_path / "q")
    again = load(tmp_path / "q")
    assert torch.equal(_out(again, ids), _out(model, ids))


@pytest.mark.parametrize("family", NEW)
def test_rtn_codes_are_the_nearest_grid_points_and_gptq_is_no_worse_than_rtn(models, family):
    base = models[family]
    ids = _ids(seed=3, n=4, s=32)
    ref = _out(base, ids)
    err = {}
    for method in ("rtn", "gptq"):
        model = copy.deepcopy(base)
        log = quantize_model(model, QuantizeConfig(method=method, bits=4, group_size=32), CAL, progress=False)
        assert sum(log.kernels.values()) == len(base.arch.linears)
        err[method] = float((_out(model, ids) - ref).norm() / ref.norm())
        if method == "rtn":  # written here: symmetric int4, step max|w| / 7 per row and 32 columns
            for n in base.arch.linears:
                W = get_module(base.module, n).weight
                step = W.view(W.shape[0], -1, 32).abs().amax(-1, keepdim=True) / 7
                expect = ((W.view(W.shape[0], -1, 32) / step).round().clamp(-8, 7) * step).view_as(W)
                torch.testing.assert_close(get_module(model.module, n).dequantized(), expect, rtol=0, atol=1e-6)
    assert 0 < err["gptq"] < 1.35 * err["rtn"]


@pytest.mark.parametrize("family", NEW)
def test_smoothquant_and_awq_compensate_their_scales(models, family):
    """W8A8 with SmoothQuant and int4 AWQ: every scale moved into the weights is taken back out of
    the inputs (folded into ModernBERT's pre-norms, kept in-layer under MPNet's post-norms). A
    scale left uncompensated multiplies channels by s (here from 0.1x to 10x), far outside these
    bounds; the bounds are RTN's own errors at the same grid."""
    base = models[family]
    ids = _ids(seed=5, n=4, s=32)
    ref = _out(base, ids)

    def rel_err(cfg):
        model = copy.deepcopy(base)
        log = quantize_model(model, cfg, CAL, progress=False)
        return float((_out(model, ids) - ref).norm() / ref.norm()), log

    rtn8, _ = rel_err(QuantizeConfig(method="rtn", bits=8, activations="dynamic"))
    sq8, log = rel_err(QuantizeConfig(method="gptq", bits=8, activations="dynamic", smoothquant=0.5))
    assert log.scales  # smoothing did act on some input groups
    assert sq8 < max(2 * rtn8, 0.02)
    rtn4, _ = rel_err(QuantizeConfig(method="rtn", bits=4, group_size=32, symmetric=False))
    awq4, _ = rel_err(QuantizeConfig(method="awq", bits=4, group_size=32, symmetric=False))
    assert awq4 < 1.3 * rtn4


@pytest.mark.parametrize("family", NEW)
def test_sparsegpt_2of4_keeps_two_of_every_four(models, family):
    model = copy.deepcopy(models[family])
    prune_model(model, PruneConfig(method="sparsegpt", pattern="2:4"), CAL, progress=False)
    for name in model.arch.linears:
        w = get_module(model.module, name).weight
        nonzero = (w.view(w.shape[0], -1, 4) != 0).sum(-1)
        assert bool((nonzero <= 2).all()) and float((nonzero == 2).float().mean()) > 0.99


@pytest.mark.parametrize("family", NEW)
def test_recover_distils_with_the_int8_grid_kept(models, family, tmp_path):
    from slimformer.recover import RecoverConfig, recover
    original = models[family]
    model = copy.deepcopy(original)
    trim_ffn(model, model.arch.blocks[-1], list(range(80)))
    refresh(model)
    quantize_model(model, QuantizeConfig(method="rtn", bits=8), progress=False)
    before = {n: get_module(model.module, n).codes().clone() for n in model.arch.linears}
    log = recover(model, original, RecoverConfig(steps=4, batch_size=2, seq_len=32, holdout=2, lr=1e-2, eval_every=2,
                                                 data=["wikitext2:validation"], eval="heldout", kl=0.0),
                  progress=False)
    assert log.steps == 4 and log.qat_layers == len(model.arch.linears)
    assert any(not torch.equal(before[n], get_module(model.module, n).codes()) for n in before)  # it trained
    again = load(save(model, tmp_path / "r"))
    ids = _ids()
    assert torch.equal(_out(again, ids), _out(model, ids))


# ---------------------------------------------------------------- sentence-transformers modules

def _sentence_folder(src, dst, pooling="mean", weights="safetensors", act="torch.nn.modules.activation.Tanh",
                     order=("Transformer", "Pooling", "Dense", "Normalize"), seed=1):
    """A copy of `src` as a sentence-transformers folder: Pooling, a Dense 64 -> 32, Normalize."""
    shutil.copytree(src, dst)
    paths = {"Transformer": "", "Pooling": "1_Pooling", "Dense": "2_Dense", "Normalize": "3_Normalize"}
    mods = [{"idx": i, "name": str(i), "path": paths[k], "type": f"sentence_transformers.models.{k}"}
            for i, k in enumerate(order)]
    (dst / "modules.json").write_text(json.dumps(mods))
    (dst / "1_Pooling").mkdir()
    (dst / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 64, f"pooling_mode_{pooling}_tokens" if pooling != "cls" else
         "pooling_mode_cls_token": True}))
    (dst / "2_Dense").mkdir()
    (dst / "2_Dense" / "config.json").write_text(json.dumps(
        {"in_features": 64, "out_features": 32, "bias": True, "activation_function": act}))
    g = torch.Generator().manual_seed(seed)
    state = {"linear.weight": torch.randn(32, 64, generator=g) * 0.2, "linear.bias": torch.randn(32, generator=g)}
    if weights == "safetensors":
        save_file(state, str(dst / "2_Dense" / "model.safetensors"))
    else:
        torch.save(state, dst / "2_Dense" / "pytorch_model.bin")
    (dst / "3_Normalize").mkdir()
    return state


@pytest.mark.parametrize("family,pooling,weights", [("mpnet", "mean", "safetensors"),
                                                    ("modernbert", "cls", "bin")])
def test_dense_after_pooling_is_scored_saved_and_reloaded(folders, family, pooling, weights, tmp_path):
    state = _sentence_folder(folders[family], tmp_path / "st", pooling, weights)
    model = load(tmp_path / "st")
    assert len(model.pooling.dense) == 1 and model.pooling.normalize and model.pooling.mode == pooling
    texts = sentences(8)
    got = encode(model, texts)
    batch = model.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():  # by hand: pool -> x W^T + b -> tanh -> x / |x|
        pooled = pool(model.module(**batch).last_hidden_state, batch["attention_mask"], pooling)
    expect = torch.tanh(pooled @ state["linear.weight"].t() + state["linear.bias"])
    expect = expect / expect.norm(dim=-1, keepdim=True)
    assert got.shape == (8, 32)
    torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-5)
    quantize_model(model, QuantizeConfig(method="rtn", bits=8), CAL, progress=False)
    save(model, tmp_path / "saved")
    name = "model.safetensors" if weights == "safetensors" else "pytorch_model.bin"
    for rel in ("modules.json", "2_Dense/config.json", f"2_Dense/{name}"):
        assert (tmp_path / "saved" / rel).read_bytes() == (tmp_path / "st" / rel).read_bytes()
    again = load(tmp_path / "saved")
    assert torch.equal(encode(again, texts), encode(model, texts))


@pytest.mark.parametrize("change,error,match", [
    (dict(order=("Transformer", "Dense", "Pooling", "Normalize")), UnsupportedModelError, "Dense after Transformer"),
    (dict(act="torch.nn.modules.activation.Softplus"), UnsupportedModelError, "activation.*Softplus"),
    (dict(pooling="weightedmean"), UnsupportedModelError, "weightedmean"),
])
def test_sentence_modules_slimformer_cannot_run_are_one_line_errors(folders, tmp_path, change, error, match):
    _sentence_folder(folders["mpnet"], tmp_path / "st", **change)
    with pytest.raises(error, match=match):
        load(tmp_path / "st")


def test_missing_dense_weights_say_to_copy_the_folder(folders, tmp_path):
    _sentence_folder(folders["mpnet"], tmp_path / "st")
    (tmp_path / "st" / "2_Dense" / "model.safetensors").unlink()
    with pytest.raises(CorruptModelError, match="no Dense weights.*copy that folder"):
        load(tmp_path / "st")


# ---------------------------------------------------------------- ONNX

@pytest.mark.parametrize("fmt", ["onnx", "openvino"])  # OpenVINO IR is converted from the same graph
@pytest.mark.parametrize("family", ["bert", "distilbert", "mpnet", "modernbert"])
def test_onnx_graph_with_pooling_dense_normalize_matches_pytorch(folders, family, fmt, tmp_path):
    import onnxruntime  # noqa: F401  (a dependency: its absence is a failure, not a skip)
    from slimformer.export import export
    from slimformer.runtime import open_model
    _sentence_folder(folders[family], tmp_path / "st", pooling="max" if family == "distilbert" else "mean")
    model = load(tmp_path / "st")
    result = export(model, fmt, tmp_path / "onnx")
    ort = open_model(tmp_path / "onnx")
    assert ort.runtime == ("onnxruntime" if fmt == "onnx" else "openvino")
    texts = sentences(24)
    lengths = model.tokenizer(texts, return_tensors=None)["input_ids"]
    assert max(map(len, lengths)) > 2 * WINDOW + 1  # local windows and logarithmic buckets are exercised
    a, b = encode(model, texts), encode(ort, texts)
    assert a.shape == b.shape == (24, 32)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    assert float(cos.min()) >= 0.9999, float(cos.min())
    assert float((a - b).abs().max()) < 1e-4
    meta = json.loads((tmp_path / "onnx" / "slimformer-export.json").read_text())
    assert meta["sentence_modules"]["dense"] == [{"path": "2_Dense", "in": 64, "out": 32, "activation": "Tanh"}]
    assert result.details["linears"]["fp32"] == len(model.arch.linears)  # the pooler dense is not in the graph


def test_onnx_of_a_trimmed_w8a8_modernbert_matches_pytorch(models, tmp_path):
    import onnxruntime  # noqa: F401  (a dependency: its absence is a failure, not a skip)
    from slimformer.export import export
    from slimformer.runtime import open_model
    model = copy.deepcopy(models["modernbert"])
    trim_model(model, TrimConfig(heads=1, ffn=0.25, score="activation"), CAL, progress=False)
    quantize_model(model, QuantizeConfig(method="rtn", bits=8, activations="dynamic"), CAL, progress=False)
    export(model, "onnx", tmp_path / "onnx")
    texts = sentences(16)
    a, b = encode(model, texts), encode(open_model(tmp_path / "onnx"), texts)
    assert [blk.attn.n_heads for blk in model.arch.blocks] == [3, 3]
    assert float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min()) >= 0.999


@pytest.mark.parametrize("family", NEW)
def test_gguf_refusal_names_the_formats_that_work(models, family, tmp_path):
    from slimformer.export import export
    with pytest.raises(UnsupportedModelError, match="hf or onnx"):
        export(models[family], "gguf", tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()
