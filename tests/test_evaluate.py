"""Quality metrics against independent computations written here from their definitions."""
import copy
import math

import pytest
import torch
from scipy.stats import spearmanr

from slimformer.data import bundled_path, read_pairs, read_sentences, read_text
from slimformer.errors import ConfigValueError, DataError, UnsupportedModelError
from slimformer.evaluate import evaluate, perplexity
from slimformer.evaluate.fidelity import embedding_fidelity, logit_fidelity


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
def test_perplexity_equals_transformers_loss(tiny, family):
    m = tiny[family]
    text = read_text(bundled_path("wikitext2", "test"))[:20000]
    r = perplexity(m, text, seq_len=64, max_windows=5, progress=False)
    # Independent: the model's own loss (labels = inputs) on each window, averaged over windows
    # (every window predicts the same number of tokens).
    ids = m.tokenizer(text, return_tensors="pt").input_ids[0][: 5 * 64].view(5, 64)
    with torch.no_grad():
        losses = [m.module(input_ids=w[None], labels=w[None]).loss.item() for w in ids]
    assert r.value == pytest.approx(math.exp(sum(losses) / len(losses)), rel=1e-5)
    assert r.n == 5 * 63 and r.extra["windows"] == 5


def test_perplexity_batching_does_not_change_the_value(tiny):
    text = read_text(bundled_path("wikitext2", "test"))[:20000]
    a = perplexity(tiny["llama"], text, seq_len=32, max_windows=6, batch_size=1, progress=False)
    b = perplexity(tiny["llama"], text, seq_len=32, max_windows=6, batch_size=4, progress=False)
    assert a.value == pytest.approx(b.value, rel=1e-5)


def test_perplexity_errors(tiny):
    with pytest.raises(ConfigValueError, match="positions"):
        evaluate(tiny["llama"], "ppl", seq_len=4096)
    with pytest.raises(DataError, match="fewer than one window"):
        perplexity(tiny["llama"], "a short text", seq_len=64, progress=False)
    with pytest.raises(UnsupportedModelError, match="causal"):
        evaluate(tiny["bert"], "ppl", seq_len=64)
    with pytest.raises(UnsupportedModelError, match="encoder"):
        evaluate(tiny["llama"], "sts")


@pytest.mark.parametrize("family", ["bert", "distilbert", "roberta"])
def test_sts_equals_direct_computation(tiny, family):
    m = tiny[family]
    r = evaluate(m, "sts", data=str(bundled_path("stsb", "dev")), split="dev", batch_size=7)

    def embed(sentence):  # one sentence at a time: no padding at all
        enc = m.tokenizer([sentence], return_tensors="pt", truncation=True, max_length=128)
        with torch.no_grad():
            return m.module(**enc).last_hidden_state[0].mean(0)

    all_pairs = read_pairs(bundled_path("stsb", "dev"))
    cos = [torch.cosine_similarity(embed(p.a), embed(p.b), dim=0).item() for p in all_pairs]
    expected = spearmanr(cos, [p.score for p in all_pairs]).statistic * 100
    assert r.value == pytest.approx(expected, abs=1e-3)
    assert r.n == len(all_pairs)


def test_fidelity_against_itself_and_a_perturbed_copy(tiny):
    m = tiny["llama"]
    text = read_text(bundled_path("wikitext2", "test"))[:20000]
    same = logit_fidelity(m, m, text, seq_len=32, max_windows=3, progress=False)
    assert same.value == pytest.approx(0.0, abs=1e-6) and same.extra["top1_agreement"] == 1.0
    other = copy.deepcopy(m)
    with torch.no_grad():
        for p in other.module.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    r = logit_fidelity(other, m, text, seq_len=32, max_windows=3, progress=False)
    ids = m.tokenizer(text, return_tensors="pt").input_ids[0][:96].view(3, 32)
    with torch.no_grad():
        lp = torch.log_softmax(other.module(input_ids=ids).logits, -1).reshape(-1, 384)
        lq = torch.log_softmax(m.module(input_ids=ids).logits, -1).reshape(-1, 384)
    expected = torch.nn.functional.kl_div(lp, lq, log_target=True, reduction="batchmean").item()
    assert r.value == pytest.approx(expected, rel=1e-4)
    assert r.value > 0


def test_embedding_fidelity_against_itself_and_a_perturbed_copy(tiny):
    m = tiny["bert"]
    r = evaluate(m, "fidelity", reference=m, split="dev")
    assert r.value == pytest.approx(1.0, abs=1e-6) and r.extra["min_cosine"] == pytest.approx(1.0, abs=1e-6)
    other = copy.deepcopy(m)
    with torch.no_grad():
        for p in other.module.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    sentences = read_sentences(bundled_path("stsb", "dev"))[:60]
    r = embedding_fidelity(other, m, sentences, batch_size=16)

    def embed(model, sentence):  # one sentence at a time, mean pooling written here
        enc = m.tokenizer([sentence], return_tensors="pt", truncation=True, max_length=128)
        with torch.no_grad():
            return model.module(**enc).last_hidden_state[0].mean(0)

    cos = torch.tensor([torch.cosine_similarity(embed(other, s), embed(m, s), dim=0).item() for s in sentences])
    assert r.value == pytest.approx(cos.mean().item(), abs=1e-5)
    assert r.extra["min_cosine"] == pytest.approx(cos.min().item(), abs=1e-5)
    assert r.n == len(sentences) and r.value < 1 - 1e-3  # the perturbation is seen
    with pytest.raises(ConfigValueError, match="reference"):
        evaluate(m, "fidelity")
    with pytest.raises(ConfigValueError, match="kind"):
        evaluate(m, "fidelity", reference=tiny["llama"])
