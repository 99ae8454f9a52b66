"""ggml_mix: llama.cpp's file types as per-tensor types, checked against llama_model_quantize's
own choices tensor by tensor, on a tiny Llama deep enough (16 layers) for llama.cpp's layer rules
(first / last eighth, every third layer, first sixteenth) and with both kinds of width: hidden 256
(whole super-blocks: q/k/v/o/gate/up take K-quants) and FFN 320 (ffn_down falls back)."""
from __future__ import annotations

import copy
import ctypes
import re

import gguf
import numpy as np
import pytest
import torch

from conftest import random_llama
from slimformer.errors import ConfigValueError
from slimformer.export import export
from slimformer.export.gguf_blocks import dense_tensor
from slimformer.nn.ggml_types import type_for_width
from slimformer.quant import QuantizeConfig, quantize_model
from slimformer.quant.stage import _resolve_mix

import llama_cpp  # a dependency: its absence is a failure, not a skip

LAYERS = 16


# name -> (layers, hidden, kv heads, FFN width, tied): whole super-blocks and fallbacks (deep,
# tied); narrow rows everywhere, the output on q8_0, two kv groups (narrow); llama.cpp's 70B rule
# (80 layers with grouped kv heads: attn_v up to q5_k)
MODELS = {"deep": (LAYERS, 256, 1, 320, False), "tied": (LAYERS, 256, 1, 320, True),
          "narrow": (8, 320, 2, 256, False), "seventy": (80, 256, 1, 64, True)}


@pytest.fixture(scope="module")
def deep(tiny_dir, tmp_path_factory):
    return {k: random_llama(tiny_dir, tmp_path_factory, num_hidden_layers=layers, hidden_size=hidden,
                            num_attention_heads=4, num_key_value_heads=kv, intermediate_size=ffn,
                            tie_word_embeddings=tied)
            for k, (layers, hidden, kv, ffn, tied) in MODELS.items()}


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMFORMER_CACHE", str(tmp_path / "cache"))


def _types(path) -> dict[str, str]:
    return {t.name: t.tensor_type.name.lower() for t in gguf.GGUFReader(str(path)).tensors}


def _llama_quantize(src, dst, mix: str) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{mix.upper()}")
    params.nthread = 1
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) == 0


@pytest.fixture(scope="module")
def f32(deep, tmp_path_factory):
    """Each model's F32 GGUF, which llama-quantize reads."""
    out = {}
    for key, model in deep.items():
        out[key] = tmp_path_factory.mktemp("f32") / "f32.gguf"
        export(model, "gguf", out[key], dtype="f32")
    return out


def _gguf_names(model) -> dict[str, str]:
    """GGUF tensor name -> module (Llama's names in llama.cpp)."""
    out = {}
    for i, b in enumerate(model.arch.blocks):
        a, f = b.attn, b.ffn
        out.update({f"blk.{i}.attn_q.weight": a.q, f"blk.{i}.attn_k.weight": a.k, f"blk.{i}.attn_v.weight": a.v,
                    f"blk.{i}.attn_output.weight": a.o, f"blk.{i}.ffn_gate.weight": f.gate,
                    f"blk.{i}.ffn_up.weight": f.up, f"blk.{i}.ffn_down.weight": f.down})
    if not model.head_is_tied:
        out["output.weight"] = model.arch.head
    return out


def _mix(model, mix: str, method: str = "rtn") -> dict[str, str]:
    """GGUF tensor name -> the type ggml_mix gives it (the table's included)."""
    cfg, table = _resolve_mix(model, QuantizeConfig(method=method, ggml_mix=mix))
    width = {n: model.module.get_submodule(n).weight.shape[1] for n in _gguf_names(model).values()}
    return {"token_embd.weight": table,
            **{g: type_for_width(cfg.ggml_type_of(n), width[n]).name for g, n in _gguf_names(model).items()}}


@pytest.mark.parametrize("key,mix", [("deep", "q4_k_m"), ("deep", "q3_k_m"), ("deep", "q2_k"), ("deep", "q4_k_s"),
                                     ("deep", "q3_k_l"), ("deep", "q5_k_m"), ("deep", "q3_k_s"), ("deep", "q5_k_s"),
                                     ("deep", "q6_k"), ("tied", "q4_k_m"), ("tied", "q4_0"), ("tied", "q8_0"),
                                     ("tied", "q4_1"), ("tied", "q5_0"), ("tied", "q5_1"), ("narrow", "q4_k_m"),
                                     ("narrow", "q2_k"), ("narrow", "q3_k_m"), ("seventy", "q4_k_m"),
                                     ("seventy", "q3_k_m")])
def test_mix_gives_llama_quantizes_tensor_types(deep, f32, tmp_path, key, mix):
    _llama_quantize(f32[key], tmp_path / "llama.gguf", mix)
    want = {k: v for k, v in _types(tmp_path / "llama.gguf").items() if v != "f32"}
    got = _mix(deep[key], mix)
    assert got == want, {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}


def test_the_rules_acted():
    """The cases above are not vacuous: each model shows the rule it is there for."""
    from slimformer.quant.ggml_mix import _is_70b, output_type
    assert output_type("q4_k_m", 320) == "q8_0" and output_type("q4_k_m", 256) == "q6_k"
    assert output_type("q8_0", 256) == "q8_0"
    assert _is_70b("llama", 80, 4, 1) and not _is_70b("llama", 80, 4, 4) and not _is_70b("llama", 16, 4, 1)


def test_seventy_b_attn_v_and_narrow_q2_k(deep):
    seventy, narrow = _mix(deep["seventy"], "q3_k_m"), _mix(deep["narrow"], "q2_k")
    assert {seventy[f"blk.{i}.attn_v.weight"] for i in range(2, 80)} == {"q5_k"}  # q4_k elsewhere
    assert _mix(deep["deep"], "q3_k_m")["blk.5.attn_v.weight"] == "q4_k"
    # two kv groups (n_gqa 2 < 4): q2_k's attn_v is q3_k, on 320 columns its fallback q4_0
    assert narrow["blk.3.attn_v.weight"] == "q4_0" and narrow["output.weight"] == "q8_0"


def test_the_mix_is_what_the_file_holds(deep, f32, tmp_path):
    """The whole path: quantize with ggml_mix, export (the table on Q6_K, from the stage log, as
    compress records it), and the file's tensor types are llama-quantize's."""
    model = copy.deepcopy(deep["tied"])
    log = quantize_model(model, QuantizeConfig(method="rtn", ggml_mix="q4_k_m"), progress=False)
    assert log.format == "ggml q4_k_m mix" and log.ggml_embedding == "q6_k"
    model.log.append(log.to_dict())
    export(model, "gguf", tmp_path / "ours.gguf", dtype="f32")
    _llama_quantize(f32["tied"], tmp_path / "llama.gguf", "q4_k_m")
    assert _types(tmp_path / "ours.gguf") == _types(tmp_path / "llama.gguf")


def test_data_driven_q4_0_follows_llama_cpps_imatrix_rule(deep):
    """With calibration data (GPTQ), Q4_0's first eighth of ffn_down is Q4_1, as llama-quantize
    --imatrix writes it; without (RTN) every ffn_down stays Q4_0."""
    model = deep["tied"]
    gptq, rtn = _mix(model, "q4_0", "gptq"), _mix(model, "q4_0", "rtn")
    down = [f"blk.{i}.ffn_down.weight" for i in range(LAYERS)]
    assert [gptq[d] for d in down] == ["q4_1"] * (LAYERS // 8) + ["q4_0"] * (LAYERS - LAYERS // 8)
    assert {rtn[d] for d in down} == {"q4_0"}
    assert {k: v for k, v in gptq.items() if k not in down} == {k: v for k, v in rtn.items() if k not in down}


def test_user_types_win_over_the_mix(deep):
    model = deep["deep"]
    cfg, _ = _resolve_mix(model, QuantizeConfig(method="rtn", ggml_mix="q4_k_m", ggml_types={r"up_proj": "q8_0"}))
    assert {cfg.ggml_type_of(b.ffn.up) for b in model.arch.blocks} == {"q8_0"}
    assert {cfg.ggml_type_of(b.ffn.gate) for b in model.arch.blocks} == {"q4_k"}
    assert cfg.ggml_type_of(model.arch.blocks[0].ffn.down) == "q8_0"  # q6_k, fallen back at 320 columns
    v0 = model.arch.blocks[0].attn.v  # a regex equal to the mix's own for that linear
    cfg, _ = _resolve_mix(model, QuantizeConfig(method="rtn", ggml_mix="q4_k_m", ggml_types={f"^{re.escape(v0)}$": "q4_0"}))
    assert cfg.ggml_type_of(v0) == "q4_0"


def test_a_tied_head_untied_by_lm_head_is_an_output_layer(deep):
    """lm_head on a tied model unties it: the head takes the output type, the table the base type."""
    model = deep["tied"]
    cfg, table = _resolve_mix(model, QuantizeConfig(method="rtn", ggml_mix="q4_k_m", lm_head=True))
    assert cfg.lm_head and cfg.ggml_type_of(model.arch.head) == "q6_k" and table == "q4_k"
    cfg, table = _resolve_mix(model, QuantizeConfig(method="rtn", ggml_mix="q4_k_m"))
    assert not cfg.lm_head and table == "q6_k"


@pytest.mark.parametrize("kind,want", [("q6_k", "q6_k"), ("q4_k", "q4_k"), ("q5_0", "q5_0"), ("q6_k_narrow", "q8_0")])
def test_float_weights_in_any_ggml_type_read_back_close(kind, want):
    """A float weight (the token table) written in a K-quant or Q5 type: the gguf package's
    dequantizer reads it back within that type's rounding error; narrow rows take the fallback."""
    cols = 96 if kind.endswith("narrow") else 512
    w = torch.randn(8, cols, generator=torch.Generator().manual_seed(0))
    data, got = dense_tensor(w, kind.removesuffix("_narrow"))
    assert got == want
    back = gguf.quants.dequantize(np.asarray(data), getattr(gguf.GGMLQuantizationType, want.upper()))
    rel = float(np.linalg.norm(back.reshape(w.shape) - w.numpy()) / np.linalg.norm(w.numpy()))
    bits = {"q6_k": 6, "q4_k": 4, "q5_0": 5, "q8_0": 8}[want]
    assert rel < 2.0 ** -(bits - 1.5), rel  # about a step of the grid over the Gaussian's range


@pytest.mark.parametrize("bad,match", [(dict(ggml_mix="q4_k_x"), "file type"),
                                       (dict(ggml_mix="q4_k_m", ggml="q4_0"), "without ggml"),
                                       (dict(ggml_mix="q4_k_m", method="awq"), "rtn or gptq"),
                                       (dict(ggml_mix="q2_k_s", method="rtn"), "importance matrix")])
def test_bad_mix_options_are_one_line_errors(bad, match):
    with pytest.raises(ConfigValueError, match=match):
        QuantizeConfig(**bad).validate()
