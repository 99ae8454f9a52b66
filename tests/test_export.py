"""Export: GGML blocks against the gguf package's own decoder, GGUF files run in llama.cpp and ONNX
graphs run in ONNX Runtime against the PyTorch model they came from (plain, trimmed, quantized),
recipe and CLI entries, and errors that leave nothing behind."""
from __future__ import annotations

import copy
import json

import gguf  # a dependency (pyproject): missing, the whole module fails to import, never skips
import numpy as np
import pytest
import torch

from slimformer import compress, load
from slimformer.cli import main
from slimformer.errors import ConfigValueError, UnsupportedModelError
from slimformer.evaluate.embed import encode, tokenize_sentences
from slimformer.export import export
from slimformer.export.gguf import _rotary_order
from slimformer.export.gguf_blocks import pack_codes, unpack_blocks
from slimformer.model import get_module
from slimformer.quant import QuantizeConfig, QuantLinear, QuantSpec, quantize_model
from slimformer.nn.spec import quantize
from slimformer.runtime import open_model, runtime_of
from slimformer.trim import TrimConfig, trim_model

CAL = {"samples": 4, "seq_len": 32}
SENTENCES = ["a short one", "the quick brown fox jumps over the lazy dog", "tokens " * 40, "x"]


def _fp16_scales(q, s, z, spec):
    """What a GGUF block stores: slimformer's values with the scale (and Q4_1's minimum) in fp16."""
    g = torch.arange(q.shape[1]) // spec.width(q.shape[1])
    s16 = s.half().float()[:, g]
    if spec.symmetric:
        return (q.float() * s16).numpy()
    m16 = (-s[:, g] * (z.float()[:, g] + 8)).half().float()
    return ((q.float() + 8) * s16 + m16).numpy()


@pytest.mark.parametrize("spec,kind", [(QuantSpec(8, 0, True), "Q8_0"), (QuantSpec(8, 64, True), "Q8_0"),
                                       (QuantSpec(4, 32, True), "Q4_0"), (QuantSpec(4, 128, True), "Q4_0"),
                                       (QuantSpec(4, 32, False), "Q4_1"), (QuantSpec(4, 64, False), "Q4_1")])
def test_blocks_carry_the_codes_exactly(spec, kind):
    """gguf's own dequantizer (written from ggml, not by us) reads back slimformer's values."""
    W = torch.randn(24, 256) * torch.rand(24, 1)
    q, s, z = quantize(W, spec)
    data, got = pack_codes(q, s, z, spec.bits, spec.group_size, spec.symmetric)
    assert got == kind.lower()
    theirs = gguf.quants.dequantize(data, getattr(gguf.GGMLQuantizationType, kind))
    assert np.array_equal(theirs, _fp16_scales(q, s, z, spec))
    assert np.array_equal(unpack_blocks(data, got, *q.shape), theirs)


def test_full_range_rtn_is_llama_cpps_q4_0():
    """RTN on the full-range int4 g32 grid writes the blocks llama.cpp's own Q4_0 rounding writes
    (the gguf package's reference quantizer), up to round-half-even vs its +0.5 truncation."""
    W = torch.randn(32, 256)
    spec = QuantSpec(4, 32, True, True)
    ours, _ = pack_codes(*quantize(W, spec), 4, 32, True)
    theirs = gguf.quants.quantize(W.numpy(), gguf.GGMLQuantizationType.Q4_0)
    assert (ours == theirs).mean() > 0.999


@pytest.mark.parametrize("bits,group,sym,width", [(3, 32, True, 64), (8, 32, False, 64), (4, 16, True, 64),
                                                  (4, 32, True, 48)])
def test_grids_no_ggml_type_holds_are_refused(bits, group, sym, width):
    q, s, z = quantize(torch.randn(4, width), QuantSpec(bits, group, sym))
    with pytest.raises(ConfigValueError, match="q8_0.*q4_0.*q4_1"):
        pack_codes(q, s, z, bits, group, sym)


def test_rotary_order_is_llama_cpps_pairing():
    """Row 2i of a head in the GGUF is HF's row i, row 2i + 1 is HF's row i + d/2."""
    order = _rotary_order(2 * 8, 2)
    assert order.tolist() == [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]


def _logits(model, ids):
    with torch.no_grad():
        return model.module(input_ids=ids).logits.float()


def _gguf_matches(model, path, atol=2e-3):
    g = open_model(str(path))
    assert g.runtime == "llama.cpp"
    ids = torch.randint(5, 380, (2, 48), generator=torch.Generator().manual_seed(1))
    ref, got = _logits(model, ids), _logits(g, ids)
    assert (ref - got).abs().max() < atol * max(1.0, ref.abs().max())
    greedy = model.module.generate(ids[:1], max_new_tokens=12, do_sample=False, pad_token_id=0)[0, 48:]
    assert g.module.generate(ids[:1], max_new_tokens=12)[0, 48:].tolist() == greedy.tolist()


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_gguf_f32_runs_in_llama_cpp_like_pytorch(tiny, family, tmp_path):
    pytest.importorskip("llama_cpp")
    res = export(tiny[family], "gguf", tmp_path / "m.gguf", dtype="f32")
    assert res.details["tensor_types"] == {"f32": 21} and res.bytes == (tmp_path / "m.gguf").stat().st_size
    _gguf_matches(tiny[family], tmp_path / "m.gguf")


@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_trimmed_llama_exports_with_its_own_shapes(tiny, tmp_path, allocation):
    """Uniform trims write their shapes; unequal FFN widths (global allocation) are zero-padded."""
    pytest.importorskip("llama_cpp")
    model = copy.deepcopy(tiny["llama"])
    cuts = dict(heads=0.5, ffn=0.25, hidden=0.25) if allocation == "uniform" else dict(ffn=0.5)  # GQA: heads uniform
    trim_model(model, TrimConfig(score="activation", allocation=allocation, compensate="none", **cuts), CAL,
               progress=False)
    export(model, "gguf", tmp_path / "t.gguf", dtype="f32")
    meta = gguf.GGUFReader(str(tmp_path / "t.gguf")).fields
    assert meta["llama.embedding_length"].contents() == model.arch.hidden_size
    assert meta["llama.attention.head_count"].contents() == model.arch.blocks[0].attn.n_heads
    widths = [b.ffn.width for b in model.arch.blocks]
    assert meta["llama.feed_forward_length"].contents() == max(widths)
    if allocation == "global":
        assert len(set(widths)) > 1, "the test needs unequal blocks"
    _gguf_matches(model, tmp_path / "t.gguf")


@pytest.mark.parametrize("symmetric,kind", [(True, "Q4_0"), (False, "Q4_1")])
def test_gptq_codes_go_into_the_gguf_bit_for_bit(tiny, tmp_path, symmetric, kind):
    pytest.importorskip("llama_cpp")
    model = copy.deepcopy(tiny["llama"])
    quantize_model(model, QuantizeConfig(method="gptq", bits=4, group_size=32, symmetric=symmetric), CAL,
                   progress=False)
    res = export(model, "gguf", tmp_path / "q.gguf", dtype="f32")
    assert res.details["exact_codes"] == len(model.arch.linears)
    tensors = {t.name: t for t in gguf.GGUFReader(str(tmp_path / "q.gguf")).tensors}
    blk = model.arch.blocks[1]
    for role, name in (("attn_k", blk.attn.k), ("ffn_down", blk.ffn.down)):
        mod = get_module(model.module, name)
        t = tensors[f"blk.1.{role}.weight"]
        assert t.tensor_type.name == kind
        got = gguf.quants.dequantize(np.array(t.data), t.tensor_type)
        ref = _fp16_scales(mod.codes(), mod.scales, mod.zeros, mod.spec)
        if role == "attn_k":
            ref = ref[_rotary_order(ref.shape[0], blk.attn.n_kv_heads).numpy()]
        assert np.array_equal(got, ref)
    # llama.cpp runs it: logits near the PyTorch model's (llama.cpp rounds activations to 8 bits)
    g = open_model(str(tmp_path / "q.gguf"))
    ids = torch.randint(5, 380, (1, 40), generator=torch.Generator().manual_seed(2))
    ref, got = _logits(model, ids), _logits(g, ids)
    assert float((ref - got).norm() / ref.norm()) < 0.05


def test_default_recipe_w8a8_with_quantized_head_exports_as_q8_0(tiny, tmp_path):
    """The default recipe's W8A8 (per-channel int8, LM head quantized and untied) fits Q8_0 exactly."""
    pytest.importorskip("llama_cpp")
    model = copy.deepcopy(tiny["llama"])
    model.module.lm_head.weight = model.module.model.embed_tokens.weight  # tied, as SmolLM2's is
    model.module.config.tie_word_embeddings = True
    assert model.head_is_tied
    quantize_model(model, QuantizeConfig(method="gptq", bits=8, activations="dynamic", smoothquant=0.5,
                                         lm_head=True), CAL, progress=False)
    res = export(model, "gguf", tmp_path / "w8.gguf", dtype="f32")
    tensors = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(tmp_path / "w8.gguf")).tensors}
    assert tensors["output.weight"] == "Q8_0" and tensors["blk.0.attn_q.weight"] == "Q8_0"
    assert res.details["exact_codes"] == len(model.arch.linears) + 1
    g = open_model(tmp_path / "w8.gguf")
    ids = torch.randint(5, 380, (1, 40), generator=torch.Generator().manual_seed(4))
    ref, got = _logits(model, ids), _logits(g, ids)
    assert float((ref - got).norm() / ref.norm()) < 0.05


def test_gguf_refuses_what_it_cannot_hold_and_leaves_nothing(tiny, tmp_path):
    with pytest.raises(UnsupportedModelError, match="this 'bert' model attends both ways.*export it as hf or onnx or openvino$"):
        export(tiny["bert"], "gguf", tmp_path / "b.gguf")
    model = copy.deepcopy(tiny["llama"])
    quantize_model(model, QuantizeConfig(method="rtn", bits=3, group_size=32), CAL, progress=False)
    with pytest.raises(ConfigValueError, match="no exact GGUF type"):
        export(model, "gguf", tmp_path / "q3.gguf")
    with pytest.raises(ConfigValueError, match=r"\*\.gguf"):
        export(tiny["llama"], "gguf", tmp_path / "m.bin")
    with pytest.raises(ConfigValueError, match="f32, f16"):
        export(tiny["llama"], "gguf", tmp_path / "m.gguf", dtype="iq2_xs")  # a llama.cpp type slimformer does not write
    assert list(tmp_path.iterdir()) == []


def test_interrupted_export_leaves_nothing(tiny, tmp_path, monkeypatch):
    import slimformer.export.gguf as G

    def broken(writer, *a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(G.gguf_vocab, "build_from_hf", broken)
    with pytest.raises(KeyboardInterrupt):
        export(tiny["llama"], "gguf", tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []


# ---- ONNX ------------------------------------------------------------------------------------

def _cosine(model, onnx_dir):
    o = open_model(str(onnx_dir))
    assert o.runtime == "onnxruntime"
    a, b = encode(model, SENTENCES), encode(o, SENTENCES)
    return float(torch.nn.functional.cosine_similarity(a, b).min())


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_onnx_fp32_encoders_match_pytorch(tiny, tmp_path, family):
    pytest.importorskip("onnxruntime")
    export(tiny[family], "onnx", tmp_path / "o")
    assert _cosine(tiny[family], tmp_path / "o") >= 0.9999


@pytest.mark.parametrize("cfg,written", [
    (dict(activations="dynamic", granularity="tensor"), "w8a8_dynamic_tensor"),
    (dict(activations="dynamic", granularity="token"), "w8a8_dynamic_token"),
    (dict(method="gptq", activations="dynamic", smoothquant=0.5), "w8a8_dynamic_tensor"),
    (dict(activations="static", smoothquant=0.5), "w8a8_static")])
def test_onnx_w8a8_keeps_slimformers_codes_and_matches(tiny, tmp_path, cfg, written):
    pytest.importorskip("onnxruntime")
    import onnx
    model = copy.deepcopy(tiny["bert"])
    quantize_model(model, QuantizeConfig(bits=8, **cfg), CAL, progress=False)
    res = export(model, "onnx", tmp_path / "o")
    assert res.details["linears"] == {written: len(model.arch.linears)}
    name = model.arch.blocks[0].attn.q
    inits = {i.name: i for i in onnx.load(str(tmp_path / "o" / "model.onnx")).graph.initializer}
    codes = onnx.numpy_helper.to_array(inits[f"{name}.qweight_t"])  # uint8: code + 128 (zero point 128)
    assert codes.dtype == np.uint8 and onnx.numpy_helper.to_array(inits[f"{name}.qweight_zero"]).reshape(-1).tolist() == [128]
    assert np.array_equal(codes.astype(np.int16) - 128, get_module(model.module, name).codes().t().numpy())
    assert _cosine(model, tmp_path / "o") >= 0.9999


def test_onnx_trimmed_unequal_blocks_and_pooling(tiny, tmp_path):
    pytest.importorskip("onnxruntime")
    model = copy.deepcopy(tiny["bert"])
    trim_model(model, TrimConfig(heads=0.5, ffn=0.5, score="activation", allocation="global"), CAL, progress=False)
    model.pooling.normalize = True
    export(model, "onnx", tmp_path / "o")
    assert _cosine(model, tmp_path / "o") >= 0.9999
    o = open_model(str(tmp_path / "o" / "model.onnx"))
    batch = tokenize_sentences(model, SENTENCES)
    emb = o.module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).sentence_embedding
    ref = encode(model, SENTENCES)
    assert torch.allclose(emb, ref, atol=1e-4)  # pooling and normalisation inside the graph


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_onnx_decoder_scores_like_pytorch(tiny, tmp_path, family):
    """Logits at every real position, with left padding in one row; W8A8 per token too."""
    pytest.importorskip("onnxruntime")
    model = copy.deepcopy(tiny[family])
    quantize_model(model, QuantizeConfig(bits=8, activations="dynamic", ignore=[r"mlp\.down_proj"]), CAL,
                   progress=False)
    res = export(model, "onnx", tmp_path / "o")
    assert res.details["linears"]["w8a8_dynamic_token"] == len(model.arch.linears) - len(model.arch.blocks)
    o = open_model(tmp_path / "o")
    ids = torch.randint(5, 380, (2, 30), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    with torch.no_grad():
        ref = model.module(input_ids=ids, attention_mask=mask).logits
    got = o.module(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(got[0], ref[0], atol=1e-4) and torch.allclose(got[1, 5:], ref[1, 5:], atol=1e-4)
    ppl = dict(task="ppl", split="test", seq_len=64, max_windows=2, progress=False)
    from slimformer import evaluate
    assert evaluate(o, **ppl).value == pytest.approx(evaluate(model, **ppl).value, rel=1e-4)


def test_onnx_refuses_gpt2(tiny, tmp_path):
    # the refusal names what does work for this model
    with pytest.raises(UnsupportedModelError, match="does not hold 'gpt2' models; export it as hf$"):
        export(tiny["gpt2"], "onnx", tmp_path / "o")
    assert not (tmp_path / "o").exists()


# ---- runtimes, recipe, CLI ---------------------------------------------------------------------

def test_runtime_choice(tiny_dir, tmp_path):
    assert runtime_of("smollm2") == "torch" and runtime_of(str(tiny_dir["bert"])) == "torch"
    (tmp_path / "m.gguf").write_bytes(b"x")
    assert runtime_of(str(tmp_path / "m.gguf")) == "llama.cpp"
    assert runtime_of(str(tmp_path / "m.gguf"), "torch") == "torch"
    assert runtime_of(str(tmp_path / "x.onnx")) == "onnxruntime"
    with pytest.raises(ConfigValueError, match="runtimes"):
        runtime_of("x", "tensorrt")


@pytest.mark.parametrize("family,fmt,name", [("bert", "onnx", "onnx"), ("llama", "gguf", "model.gguf")])
def test_recipe_export_is_written_and_scored_in_its_runtime(tiny, tmp_path, family, fmt, name):
    pytest.importorskip("onnxruntime" if fmt == "onnx" else "llama_cpp")
    recipe = {"stages": [{"quantize": {"bits": 8, "activations": "dynamic"}}] if fmt == "onnx" else
              [{"quantize": {"method": "rtn", "bits": 4, "group_size": 32}}],
              "calibration": CAL, "evaluate": {"max_windows": 2, "seq_len": 64, "fidelity": False},
              "bench": {"repeats": 1, "warmup": 0, "batch_sizes": [1], "seq_lens": [16], "throughput_items": 2,
                        "throughput_seq_len": 32, "throughput_passes": 1, "decode_new_tokens": 2,
                        "decode_prompt": 8, "decode_repeats": 1},
              "export": {"format": fmt}}
    r = compress(tiny[family], recipe, out=tmp_path / "out", progress=False)
    assert (tmp_path / "out" / name).exists() and r.export["path"] == name
    saved = json.loads((tmp_path / "out" / "results.json").read_text())["export"]
    q_torch, q_export = r.quality["compressed"]["value"], saved["quality"]["value"]
    assert abs(q_export - q_torch) < (0.5 if fmt == "onnx" else 0.05 * q_torch)
    assert f"export {fmt}" in (tmp_path / "out" / "report.md").read_text()


def test_recipe_export_errors_before_any_work(tiny, tmp_path):
    from slimformer.errors import RecipeError
    from slimformer.recipe import parse_recipe
    with pytest.raises(RecipeError, match="formats: hf, compressed-tensors, onnx, gguf, openvino"):
        parse_recipe({"export": {"format": "tflite"}})
    with pytest.raises(RecipeError, match="gguf only"):
        parse_recipe({"export": {"format": "onnx", "type": "q8_0"}})
    with pytest.raises(UnsupportedModelError, match="GGUF export writes causal language models"):
        compress(tiny["bert"], {"stages": [], "export": {"format": "gguf"}}, out=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_export_from_a_compress_output_and_eval_in_the_runtime(tiny_dir, tmp_path, capsys):
    pytest.importorskip("llama_cpp")
    out = tmp_path / "c"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stages:\n  - quantize: {method: rtn, bits: 8, group_size: 32}\n"
                      "evaluate: {max_windows: 1, seq_len: 32, fidelity: false}\n"
                      "bench: {repeats: 1, warmup: 0, batch_sizes: [1], seq_lens: [16], throughput_items: 2, "
                      "throughput_seq_len: 32, throughput_passes: 1, decode_new_tokens: 2, decode_prompt: 8, "
                      "decode_repeats: 1}\n"
                      "calibration: {samples: 2, seq_len: 32}\n")
    assert main(["compress", str(tiny_dir["llama"]), "--recipe", str(recipe), "--out", str(out)]) == 0
    assert main(["export", str(out), "--format", "gguf", "--out", str(tmp_path / "m.gguf")]) == 0
    assert "q8_0" in capsys.readouterr().out
    js = tmp_path / "e.json"
    assert main(["eval", str(tmp_path / "m.gguf"), "--seq-len", "32", "--max-windows", "2", "--json", str(js)]) == 0
    assert "llama.cpp" in json.loads(js.read_text())["protocol"]
    assert main(["export", str(out), "--format", "gguf", "--out", str(tmp_path / "m.gguf")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(tiny_dir["bert"]), "--format", "onnx", "--out", str(tmp_path / "o"),
                 "--type", "q8_0"]) == 2
    assert isinstance(get_module(load(out / "model").module, "model.layers.0.self_attn.q_proj"), QuantLinear)


def test_hf_export_dense_loads_in_transformers_and_quantized_in_slimformer(tiny, tmp_path):
    import transformers as T
    export(tiny["bert"], "hf", tmp_path / "dense")
    plain = T.AutoModel.from_pretrained(tmp_path / "dense").eval()
    ids = torch.randint(5, 380, (1, 12))
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).last_hidden_state,
                              tiny["bert"].module(input_ids=ids).last_hidden_state, atol=1e-6)
    model = copy.deepcopy(tiny["llama"])
    quantize_model(model, QuantizeConfig(method="gptq", bits=4, group_size=32), CAL, progress=False)
    res = export(model, "hf", tmp_path / "q")
    assert res.bytes == sum(p.stat().st_size for p in (tmp_path / "q").iterdir())
    assert torch.equal(_logits(load(tmp_path / "q"), ids), _logits(model, ids))
