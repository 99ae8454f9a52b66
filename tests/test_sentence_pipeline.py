"""One sentence pipeline (pool -> Dense -> Normalize, evaluate/embed.py) under encode, trim's
calibration objective and recover's distillation losses; hidden-channel trimming with a Dense head
and on MPNet / ModernBERT; the bidirectional Gemma 3 encoder as a sentence model."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
import transformers as T

from slimformer import load, save
from slimformer.errors import ConfigValueError
from slimformer.evaluate.embed import embed_batch, encode, pool
from slimformer.model import get_module
from slimformer.recover.losses import LossWeights, encoder_losses
from slimformer.trim import TrimConfig, trim_model
from slimformer.trim.objective import TEMPERATURE, calibration_loss, targets
from slimformer.trim.surgery import refresh, trim_head_dims, trim_hidden

from test_families_encoders import CAL, _sentence_folder, configs, sentences

TEXTS = sentences(8)


@pytest.fixture(scope="module")
def bert_dense(tiny_dir, tmp_path_factory):
    """A tiny bert as a sentence-transformers folder: mean pooling, Dense 64 -> 32 (tanh), Normalize."""
    folder = tmp_path_factory.mktemp("pipeline") / "bert_dense"
    state = _sentence_folder(tiny_dir["bert"], folder)
    return folder, state


def _batch(model, texts=TEXTS):
    return dict(model.tokenizer(texts, padding=True, return_tensors="pt"))


def _by_hand(states, mask, state):
    """pool (mean over real tokens) -> x W^T + b -> tanh, written here."""
    m = mask[..., None].float()
    pooled = (states * m).sum(1) / m.sum(1)
    return torch.tanh(pooled @ state["linear.weight"].t() + state["linear.bias"])


def _perturbed(model, seed=5):
    student = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in student.arch.linears[:4]:
            w = get_module(student.module, name).weight
            w.add_(torch.randn(w.shape, generator=g) * 0.05)
    return student


# ---------------------------------------------------------------- recover's losses

def test_distillation_losses_and_gradients_go_through_the_dense_head(bert_dense):
    folder, state = bert_dense
    teacher = load(folder)
    student = _perturbed(teacher)
    assert len(student.pooling.dense) == 1
    batch = _batch(student)
    mask = batch["attention_mask"]
    w = LossWeights(cosine=1.0, mse=0.5, relation=2.0)
    out_s = student.module(**batch)
    with torch.no_grad():
        out_t = teacher.module(**batch)
    parts = encoder_losses(out_s, out_t, batch, w, student.pooling, teacher.pooling)
    parts["total"].sum().backward()
    got_grad = get_module(student.module, student.arch.linears[0]).weight.grad.clone()

    student.module.zero_grad()
    s_states = student.module(**batch).last_hidden_state
    es, et = _by_hand(s_states, mask, state), _by_hand(out_t.last_hidden_state, mask, state)
    cos = 1 - (es * et).sum(-1) / (es.norm(dim=-1) * et.norm(dim=-1))
    mse = (es - et).pow(2).mean(-1) / et.pow(2).mean()
    ns, nt = es / es.norm(dim=-1, keepdim=True), et / et.norm(dim=-1, keepdim=True)
    rel = (ns @ ns.T - nt @ nt.T).pow(2).mean(-1)
    expect = cos + 0.5 * mse + 2.0 * rel
    (expect.sum()).backward()
    torch.testing.assert_close(parts["cosine"], cos, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(parts["mse"], mse, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(parts["total"], expect, rtol=1e-4, atol=1e-6)
    assert float(cos.detach().min()) > 1e-4  # the student differs: a loss of zero would not test anything
    expect_grad = get_module(student.module, student.arch.linears[0]).weight.grad
    assert float(expect_grad.abs().max()) > 0
    torch.testing.assert_close(got_grad, expect_grad, rtol=1e-3, atol=1e-7)


def test_losses_without_dense_are_what_plain_pooling_gave(tiny):
    bert = tiny["bert"]
    student = _perturbed(bert)
    batch = _batch(student)
    with torch.no_grad():
        out_s, out_t = student.module(**batch), bert.module(**batch)
    w = LossWeights(cosine=1.0, mse=1.0, relation=1.0)
    parts = encoder_losses(out_s, out_t, batch, w, student.pooling, bert.pooling)
    s = pool(out_s.last_hidden_state, batch["attention_mask"], "mean")
    t = pool(out_t.last_hidden_state, batch["attention_mask"], "mean")
    assert torch.equal(parts["cosine"], 1.0 - F.cosine_similarity(s, t, dim=-1))
    assert torch.equal(parts["total"], encoder_losses(out_s, out_t, batch, w, "mean")["total"])


# ---------------------------------------------------------------- trim's objective

def test_trim_objective_compares_dense_embeddings(bert_dense):
    folder, state = bert_dense
    original = load(folder)
    model = _perturbed(original, seed=7)
    batch = _batch(model)
    target = targets(model, original, [batch])[0]
    with torch.no_grad():
        loss = calibration_loss(model, batch, target)
        e = _by_hand(model.module(**batch).last_hidden_state, batch["attention_mask"], state)
        t = _by_hand(original.module(**batch).last_hidden_state, batch["attention_mask"], state)
    e, t = e / e.norm(dim=-1, keepdim=True), t / t.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(target, t, rtol=1e-5, atol=1e-6)
    expect = F.cross_entropy(e @ t.T / TEMPERATURE, torch.arange(len(TEXTS)))
    assert float(loss) == pytest.approx(float(expect), rel=1e-4)


def test_embed_batch_is_what_encode_returns(bert_dense):
    model = load(bert_dense[0])
    batch = _batch(model)
    with torch.no_grad():
        got = embed_batch(model, batch)
    torch.testing.assert_close(got, encode(model, TEXTS), rtol=1e-5, atol=1e-6)
    assert got.shape == (8, 32) and torch.allclose(got.norm(dim=-1), torch.ones(8))


# ---------------------------------------------------------------- hidden channels

def test_hidden_trim_narrows_the_dense_inputs_and_its_files(bert_dense, tmp_path):
    model = load(bert_dense[0])
    trim_model(model, TrimConfig(hidden=16, score="magnitude"), progress=False)
    assert model.arch.hidden_size == 48 and model.pooling.dense[0].weight.shape == (32, 48)
    emb = encode(model, TEXTS)
    assert emb.shape == (8, 32)
    save(model, tmp_path / "t")
    assert json.loads((tmp_path / "t" / "2_Dense" / "config.json").read_text())["in_features"] == 48
    assert json.loads((tmp_path / "t" / "1_Pooling" / "config.json").read_text())["word_embedding_dimension"] == 48
    again = load(tmp_path / "t")
    assert torch.equal(encode(again, TEXTS), emb)


@pytest.fixture(scope="module")
def encoders(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline_encoders")
    tok = T.AutoTokenizer.from_pretrained(tiny_dir["bert"])
    tok.model_input_names = ["input_ids", "attention_mask"]
    out = {}
    for name, cfg in configs().items():
        torch.manual_seed(0)
        module = T.AutoModel.from_config(cfg).eval()
        with torch.no_grad():
            for n, p in module.named_parameters():
                if "norm" in n.lower() or n.endswith("bias"):
                    p.add_(torch.randn_like(p) * 0.1)
                elif n.endswith("relative_attention_bias.weight"):
                    p.normal_(0, 1.0)
        module.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out[name] = load(root / name)
    return out


def _states(model, texts=TEXTS):
    b = _batch(model, texts)
    with torch.no_grad():
        return model.module(**b).last_hidden_state


@pytest.mark.parametrize("family", ["mpnet", "modernbert"])
def test_hidden_trim_keeping_every_channel_is_the_original(encoders, family):
    model = copy.deepcopy(encoders[family])
    expect = _states(model)
    every = torch.arange(model.arch.blocks[0].attn.head_dim).repeat(model.arch.blocks[0].attn.n_heads, 1)
    for blk in model.arch.blocks:  # the path a hidden trim takes when head_dim follows the hidden size
        trim_head_dims(model, blk, every, every)
    refresh(model)
    trim_hidden(model, range(model.arch.hidden_size))
    refresh(model)
    assert torch.equal(_states(model), expect)


def test_mpnet_hidden_trim_keeps_the_shared_bias_and_reloads_in_transformers(encoders, tmp_path):
    model = copy.deepcopy(encoders["mpnet"])
    log = trim_model(model, TrimConfig(hidden=16, score="activation"), CAL, progress=False)
    assert log.standard and log.hidden == {"head_dim": 12, "removed": 16, "hidden_size": 48}
    assert get_module(model.module, model.arch.relative_bias.table).weight.shape == (32, 4)
    save(model, tmp_path / "t")
    plain = T.AutoModel.from_pretrained(tmp_path / "t").eval()
    b = _batch(model)
    with torch.no_grad():
        assert torch.equal(plain(**b).last_hidden_state, _states(model))


def test_modernbert_hidden_trim_is_refused_before_anything_changes(encoders):
    model = copy.deepcopy(encoders["modernbert"])
    with pytest.raises(ConfigValueError, match="rotary.*trim heads, ffn or layers instead"):
        trim_model(model, TrimConfig(ffn=0.25, hidden=16, score="magnitude"), progress=False)
    assert [b.ffn.width for b in model.arch.blocks] == [96, 96] and model.arch.hidden_size == 64


# ---------------------------------------------------------------- bidirectional Gemma 3 encoder

def gemma3_config(**kw) -> T.Gemma3TextConfig:
    """GQA (4 heads over 2 KV heads), head_dim 16 != hidden / heads, sliding / global layers with
    their own rotary bases, a window shorter than STS-B sentences, a logit scale other than head_dim's."""
    base = dict(vocab_size=384, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, max_position_embeddings=128, sliding_window=8,
                layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                query_pre_attn_scalar=24, use_bidirectional_attention=True,
                pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return T.Gemma3TextConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def gemma3_folders(tiny_dir, tmp_path_factory):
    """{"plain": a tiny random bidirectional Gemma 3, "st": it as a sentence-transformers folder
    with mean pooling, a Dense 64 -> 32 and Normalize}, and that Dense layer's state."""
    root = tmp_path_factory.mktemp("gemma3_encoder")
    tok = T.AutoTokenizer.from_pretrained(tiny_dir["bert"])
    tok.model_input_names = ["input_ids", "attention_mask"]
    torch.manual_seed(0)
    module = T.AutoModel.from_config(gemma3_config()).eval()
    with torch.no_grad():  # norm weights away from their zero init (w enters as 1 + w), trained-like scales
        for n, p in module.named_parameters():
            if "norm" in n:
                p.normal_(0, 0.3)
            elif p.dim() == 2 and "embed" not in n:
                p.normal_(0, p.shape[1] ** -0.5)
    module.save_pretrained(root / "plain")
    tok.save_pretrained(root / "plain")
    state = _sentence_folder(root / "plain", root / "st")
    return {"plain": root / "plain", "st": root / "st"}, state


def test_gemma3_encoder_loads_as_an_encoder_and_encodes_through_its_dense(gemma3_folders, tmp_path):
    folders, state = gemma3_folders
    model = load(folders["st"])
    assert model.kind == "encoder" and model.arch.bidirectional and type(model.module).__name__ == "Gemma3TextModel"
    b = _batch(model)
    with torch.no_grad():
        states = model.module(**b).last_hidden_state
    expect = _by_hand(states, b["attention_mask"], state)
    expect = expect / expect.norm(dim=-1, keepdim=True)
    got = encode(model, TEXTS)
    torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-5)
    # bidirectional: the first token's state depends on the last one (a causal stack's would not)
    ids = b["input_ids"][:1].clone()
    with torch.no_grad():
        first = model.module(input_ids=ids).last_hidden_state[0, 0]
        ids[0, -1] = 5 if int(ids[0, -1]) != 5 else 6
        assert not torch.allclose(model.module(input_ids=ids).last_hidden_state[0, 0], first)
    save(model, tmp_path / "saved")
    again = load(tmp_path / "saved")
    assert torch.equal(encode(again, TEXTS), got)
    for rel in ("modules.json", "2_Dense/config.json", "2_Dense/model.safetensors"):
        assert (tmp_path / "saved" / rel).read_bytes() == (folders["st"] / rel).read_bytes()


def test_gemma3_encoder_sts_on_stsb_scores_its_embeddings(gemma3_folders):
    import math
    from scipy.stats import spearmanr
    from slimformer.data.bundled import bundled_path
    from slimformer.data.readers import read_pairs
    from slimformer.evaluate.sts import sts
    model = load(gemma3_folders[0]["st"])
    pairs = read_pairs(bundled_path("stsb", "dev"))[:48]
    result = sts(model, pairs, data="stsb", split="dev")
    cos = F.cosine_similarity(encode(model, [p.a for p in pairs]), encode(model, [p.b for p in pairs]), dim=-1)
    assert result.n == 48 and math.isfinite(result.value)
    assert result.value == pytest.approx(100 * spearmanr(cos.numpy(), [p.score for p in pairs]).statistic)


def test_gemma3_encoder_onnx_graph_matches_pytorch_on_stsb(gemma3_folders, tmp_path):
    import onnxruntime  # noqa: F401  (a dependency: its absence is a failure, not a skip)
    from slimformer.export import export
    from slimformer.model.families import exports_for
    from slimformer.runtime import open_model
    model = load(gemma3_folders[0]["st"])
    assert "onnx" in exports_for(model.arch)
    export(model, "onnx", tmp_path / "onnx")
    ort = open_model(tmp_path / "onnx")
    texts = sentences(24)
    lengths = [len(x) for x in model.tokenizer(texts)["input_ids"]]
    assert max(lengths) > 2 * 8 + 1 and min(lengths) < max(lengths)  # windows and padding are exercised
    a, b = encode(model, texts), encode(ort, texts)
    assert a.shape == b.shape == (24, 32)
    cos = F.cosine_similarity(a, b, dim=-1)
    assert float(cos.min()) >= 0.9999, float(cos.min())
    assert float((a - b).abs().max()) < 1e-4
    tokens = _batch(model, texts)
    with torch.no_grad():  # the token states too, padding excluded
        pt = model.module(**tokens).last_hidden_state
    onnx_states = ort.module(**tokens).last_hidden_state
    real = tokens["attention_mask"].bool()
    torch.testing.assert_close(torch.as_tensor(onnx_states)[real], pt[real], rtol=1e-3, atol=1e-4)


def test_gemma3_decoder_is_not_written_as_an_encoder_graph(tiny_dir, tmp_path):
    from slimformer.errors import UnsupportedModelError
    from slimformer.export import export
    from slimformer.model.families import exports_for
    torch.manual_seed(0)
    T.AutoModelForCausalLM.from_config(gemma3_config(use_bidirectional_attention=False)).save_pretrained(tmp_path / "dec")
    T.AutoTokenizer.from_pretrained(tiny_dir["llama"]).save_pretrained(tmp_path / "dec")
    model = load(tmp_path / "dec")
    assert model.is_causal and "onnx" not in exports_for(model.arch)
    with pytest.raises(UnsupportedModelError, match="export it as hf"):
        export(model, "onnx", tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()
