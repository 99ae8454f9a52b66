"""Trimming the real embedded models: quality bounds from the benchmarks, and saved folders that
plain transformers loads with the same outputs."""
import copy

import pytest
import torch
import transformers as T

from conftest import assert_same_embeddings
from slimformer import evaluate, load, save
from slimformer.trim import TrimConfig, trim_model

pytestmark = pytest.mark.integration


CAL = {"samples": 256}  # calibration sentences: a quarter of the default, a third of the time


def test_minilm_half_heads_half_ffn_keeps_most_of_sts(minilm, tmp_path):
    model = copy.deepcopy(minilm)
    log = trim_model(model, TrimConfig(heads=0.5, ffn=0.5), CAL, original=minilm, progress=False)
    assert [(b["heads"], b["ffn"]) for b in log.blocks] == [(6, 768)] * 6
    score = evaluate(model, "sts", split="test", progress=False).value
    # fp32 82.03; 77.65 here (256 sentences), 78.24 with the default 1024 (benchmarks/trim_encoder.py;
    # Torch-Pruning: 74.27)
    assert score > 77.0
    save(model, tmp_path / "m")  # heads narrower than hidden: a shape map, not a plain config
    assert_same_embeddings(load(tmp_path / "m"), model)  # so the reloaded STS score is `score`


def test_minilm_ffn_and_hidden_trim_loads_in_plain_transformers(minilm, tmp_path):
    model = copy.deepcopy(minilm)
    log = trim_model(model, TrimConfig(ffn=0.25, hidden=0.25, layers=1), CAL, original=minilm, progress=False)
    assert log.standard and log.hidden == {"head_dim": 24, "removed": 96, "hidden_size": 288}
    save(model, tmp_path / "m")
    plain = T.AutoModel.from_pretrained(tmp_path / "m").eval()
    batch = model.tokenizer(["a cat sat on the mat", "trimming keeps shapes consistent"], padding=True,
                            return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).last_hidden_state, model.module(**batch).last_hidden_state)
    assert evaluate(model, "sts", split="test", progress=False).value > 50


def test_smollm2_layers_and_gqa_trim_load_in_plain_transformers(smollm2, tmp_path):
    cal = {"samples": 4, "seq_len": 256}
    model = copy.deepcopy(smollm2)
    log = trim_model(model, TrimConfig(layers=6, kv_heads=1, ffn=0.25), cal, original=smollm2, progress=False)
    assert log.standard and model.arch.n_layers == 24
    assert (model.arch.blocks[0].attn.n_heads, model.arch.blocks[0].attn.n_kv_heads, model.arch.blocks[0].ffn.width) \
        == (6, 2, 1152)
    save(model, tmp_path / "m")
    plain = T.AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    ids = model.tokenizer("The trimmed model still reads text", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, model.module(input_ids=ids).logits)
    ppl = evaluate(model, "ppl", max_windows=1, seq_len=512, progress=False).value
    assert ppl < 1000  # one-shot; the benchmarks report the 64-window figures
