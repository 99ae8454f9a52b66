"""GGUF export of the families beyond llama: qwen2 (q/k/v biases), qwen3 (per-head q/k norms),
gemma3 (1 + w norms, sandwich norms, embedding scale, sliding layers with their own rope base),
phi3 (fused qkv and [gate; up]). Each tiny random model runs in llama.cpp like in PyTorch, loads
back through transformers, keeps GPTQ codes bit for bit, and what llama.cpp would compute
differently is refused."""
from __future__ import annotations

import copy
import math

import gguf
import numpy as np
import pytest
import torch
import transformers as T

from conftest import POSITIONS, VOCAB
from slimformer.errors import UnsupportedModelError
from slimformer.export import export
from slimformer.model import get_module, load
from slimformer.quant import QuantizeConfig, quantize_model
from slimformer.runtime import open_model

import llama_cpp  # noqa: F401,E402  (a dependency: its absence is a failure, not a skip)
CAL = {"samples": 4, "seq_len": 32}
FAMILIES = ("qwen2", "qwen3", "phi3", "gemma3")


def _configs() -> dict[str, T.PretrainedConfig]:
    common = dict(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2, hidden_size=64,
                  num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
                  max_position_embeddings=POSITIONS)
    return {
        "qwen2": T.Qwen2Config(num_hidden_layers=2, **common),
        "qwen3": T.Qwen3Config(num_hidden_layers=2, head_dim=16, **common),
        # llama.cpp's phi3 vocabulary loader looks up <|endoftext|>: one more row for it
        "phi3": T.Phi3Config(num_hidden_layers=2, **{**common, "vocab_size": VOCAB + 8}),
        # a window shorter than the test sequences, a pattern that is not llama.cpp's default
        # (every 6th layer global) and a local rope base that is not its default 10000: each is
        # read from the header, or the logits differ
        "gemma3": T.Gemma3TextConfig(
            num_hidden_layers=4, head_dim=16, query_pre_attn_scalar=16, sliding_window=16,
            layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
            rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 5e4}}, **common),
    }


def _build(name: str, cfg, tokenizer, folder):
    torch.manual_seed(0)
    module = T.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # norms away from their init, so that a wrong offset or a skipped norm shows
        for pname, p in module.named_parameters():
            if "norm" in pname:
                p.add_(torch.randn_like(p) * 0.3)
    tok = copy.deepcopy(tokenizer)
    if name == "phi3":
        tok.add_special_tokens({"additional_special_tokens": ["<|endoftext|>"]})
    module.save_pretrained(folder)
    tok.save_pretrained(folder)
    return load(folder)


@pytest.fixture(scope="module")
def models(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf_families")
    tokenizer = T.AutoTokenizer.from_pretrained(tiny_dir["llama"])
    return {name: _build(name, cfg, tokenizer, root / name) for name, cfg in _configs().items()}


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMFORMER_CACHE", str(tmp_path / "cache"))  # tokenizers and dequantized folders


def _ids(n=48, seed=1):
    return torch.randint(5, 380, (2, n), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids):
    with torch.no_grad():
        return model.module(input_ids=ids).logits.float()


EXPECTED = {  # tensors each family's graph reads that llama's does not
    "qwen2": ["blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias"],
    "qwen3": ["blk.0.attn_q_norm.weight", "blk.0.attn_k_norm.weight"],
    "phi3": ["blk.0.attn_qkv.weight"],
    "gemma3": ["blk.0.attn_q_norm.weight", "blk.0.post_attention_norm.weight", "blk.0.post_ffw_norm.weight"],
}


@pytest.mark.parametrize("family", FAMILIES)
def test_f32_gguf_runs_in_llama_cpp_like_pytorch(models, family, tmp_path):
    model = models[family]
    res = export(model, "gguf", tmp_path / "m.gguf", dtype="f32")
    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    assert reader.fields["general.architecture"].contents() == family == res.details["architecture"]
    names = {t.name for t in reader.tensors}
    assert set(EXPECTED[family]) <= names
    g = open_model(str(tmp_path / "m.gguf"))
    assert g.runtime == "llama.cpp"
    ids = _ids()
    ref, got = _logits(model, ids), _logits(g, ids)
    assert (ref - got).abs().max() < 2e-3 * max(1.0, float(ref.abs().max()))
    greedy = model.module.generate(ids[:1], max_new_tokens=12, do_sample=False, pad_token_id=0)[0, 48:]
    assert g.module.generate(ids[:1], max_new_tokens=12)[0, 48:].tolist() == greedy.tolist()


def test_gemma3_norms_are_written_as_one_plus_w_and_the_window_per_layer(models, tmp_path):
    model = models["gemma3"]
    export(model, "gguf", tmp_path / "g.gguf", dtype="f32")
    reader = gguf.GGUFReader(str(tmp_path / "g.gguf"))
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    for gguf_name, hf_name in (("blk.1.attn_norm", "model.layers.1.input_layernorm"),
                               ("blk.1.ffn_norm", "model.layers.1.pre_feedforward_layernorm"),
                               ("blk.1.post_ffw_norm", "model.layers.1.post_feedforward_layernorm"),
                               ("blk.1.attn_k_norm", "model.layers.1.self_attn.k_norm"), ("output_norm", "model.norm")):
        w = get_module(model.module, hf_name).weight.detach().numpy()
        assert np.array_equal(tensors[f"{gguf_name}.weight"], w + 1), gguf_name
    f = reader.fields
    assert f["gemma3.attention.sliding_window"].contents() == 16
    assert f["gemma3.attention.sliding_window_pattern"].contents() == [True, False, True, False]
    assert f["gemma3.rope.freq_base"].contents() == 1e6 and f["gemma3.rope.freq_base_swa"].contents() == 5e4
    # llama.cpp scales the embeddings itself: the GGUF holds them unscaled
    emb = model.module.model.embed_tokens.weight.detach().numpy()
    assert np.array_equal(tensors["token_embd.weight"], emb)


@pytest.mark.parametrize("family", ["qwen3", "gemma3", "phi3"])
def test_export_loads_back_through_transformers(models, family, tmp_path):
    """The family's gguf_sources: the exported file dequantizes into the same model."""
    model = models[family]
    export(model, "gguf", tmp_path / "m.gguf", dtype="f32")
    back = load(tmp_path / "m.gguf")
    assert back.arch.family == model.arch.family
    ids = _ids(24, seed=3)
    assert torch.allclose(_logits(back, ids), _logits(model, ids), atol=1e-4)


@pytest.mark.parametrize("family,tensor,method", [("qwen2", "attn_q", "gptq"), ("qwen3", "attn_q", "gptq"),
                                                  ("gemma3", "attn_q", "gptq"), ("phi3", "attn_qkv", "gptq"),
                                                  ("gemma3", "attn_q", "awq"), ("phi3", "attn_qkv", "awq")])
def test_gptq_and_awq_codes_go_in_bit_for_bit_without_rotary_reordering(models, family, tensor, method, tmp_path):
    """NeoX-rope architectures take HF's q / k rows as they are (no interleaving permutation);
    Phi-3's fused qkv goes in as one tensor with its codes; AWQ's scales folded into Gemma's
    (1 + w) norms and Phi-3's fused rows leave codes that go in exactly too."""
    model = copy.deepcopy(models[family])
    quantize_model(model, QuantizeConfig(method=method, bits=4, group_size=32, symmetric=True), CAL, progress=False)
    res = export(model, "gguf", tmp_path / "q.gguf", dtype="f32")
    assert res.details["exact_codes"] == len(model.arch.linears)
    tensors = {t.name: t for t in gguf.GGUFReader(str(tmp_path / "q.gguf")).tensors}
    attn = model.arch.blocks[1].attn
    mod = get_module(model.module, attn.qkv or attn.q)
    t = tensors[f"blk.1.{tensor}.weight"]
    assert t.tensor_type.name == "Q4_0"
    g = torch.arange(mod.codes().shape[1]) // 32
    ref = (mod.codes().float() * mod.scales.half().float()[:, g]).numpy()
    assert np.array_equal(gguf.quants.dequantize(np.array(t.data), t.tensor_type), ref)
    out = open_model(str(tmp_path / "q.gguf"))
    ids = _ids(40, seed=2)[:1]
    ref_logits, got = _logits(model, ids), _logits(out, ids)
    assert float((ref_logits - got).norm() / ref_logits.norm()) < 0.05


def _patched(model, **changes):
    """A shallow copy whose ArchMap says something else (what another checkpoint would say)."""
    import dataclasses
    other = copy.copy(model)
    other.arch = dataclasses.replace(model.arch, **changes)
    return other


def test_what_llama_cpp_computes_differently_is_refused(models, tiny, tmp_path):
    gemma = models["gemma3"]
    cases = [
        (_patched(gemma, embed_scale=1.0), "scales token embeddings by sqrt"),
        (_patched(models["qwen3"], embed_scale=math.sqrt(64)), "scales token embeddings by 1"),
        (_patched(gemma, rope=None), "rotary"),
        (_patched(gemma, kind="encoder", bidirectional=True), "attends both ways"),
    ]
    scaled = copy.deepcopy(gemma)
    for blk in scaled.arch.blocks:
        get_module(scaled.module, blk.attn.module).scaling = 0.1  # query_pre_attn_scalar != head_dim
    cases.append((scaled, "attention logits"))
    no_eot = copy.copy(models["phi3"])
    no_eot.tokenizer = tiny["llama"].tokenizer
    cases.append((no_eot, r"<\|endoftext\|>"))
    for model, message in cases:
        with pytest.raises(UnsupportedModelError, match=message):
            export(model, "gguf", tmp_path / "x.gguf", dtype="f32")
    assert list(tmp_path.iterdir()) == []
