"""Recovery that keeps the original model (encoders): the multi-domain training mixture and its
per-source held-out slices, selection on fidelity to the original, intermediate-layer matching
against TinyBERT's formula, tracked task curves, and the report's multi-domain fidelity."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from slimformer.data import bundled_path, split_sentences
from slimformer.errors import ConfigValueError, DataError
from slimformer.evaluate.embed import encode
from slimformer.evaluate.fidelity import encoder_fidelity
from slimformer.recover import RecoverConfig, recover
from slimformer.recover.data import build_train_set
from slimformer.recover.losses import LossWeights, causal_losses, encoder_losses
from slimformer.trim import TrimConfig, trim_model


def test_default_encoder_mixture_gives_every_source_an_equal_share(tiny, tmp_path):
    data = build_train_set(tiny["bert"], [], 128, 600)
    assert data.sources == ["stsb:train", "sst2:train", "wikitext2:validation"]
    mix = data.mixture
    assert mix["stsb:train"]["heldout"] == mix["sst2:train"]["heldout"] == 200  # sentence units
    assert 200 <= mix["wikitext2:validation"]["heldout"] < 260  # whole paragraphs with their sentences
    assert len(data.heldout) == sum(v["heldout"] for v in mix.values())
    train = set(data.examples)
    assert not set(data.heldout) & train  # held out of every source: never trained on
    # no held-out paragraph shares a sentence with the training texts
    held_paragraphs = [t for t in data.heldout if len(split_sentences(t)) > 1]
    assert held_paragraphs and not any(set(split_sentences(p)) & train for p in held_paragraphs)
    largest = max(v["texts"] for v in mix.values())
    assert len(data.examples) == 3 * largest  # round-robin: equal shares, small sources repeat
    # consecutive triples hold one text of each source, in source order
    first = data.examples[:3]
    raw = {s: bundled_path(*s.split(":")).read_text() for s in data.sources}
    assert all(t in raw[s] for t, s in zip(first, data.sources))
    # running text gives its paragraphs too (inputs longer than one sentence)
    wiki = data.examples[2::3][:2000]
    assert any(len(split_sentences(t)) > 1 for t in wiki)


def test_a_source_too_small_for_its_held_out_share_is_refused(tiny, tmp_path):
    small = tmp_path / "tiny.txt"
    small.write_text("One short sentence is here.\nAnother short sentence is here.\n")
    with pytest.raises(DataError, match="held out"):
        build_train_set(tiny["bert"], ["stsb:train", str(small)], 128, 600)


def test_layer_matching_matches_tinybert_formula():
    torch.manual_seed(0)
    s_states = tuple(torch.randn(2, 5, 8) for _ in range(3 + 1))  # student: 3 blocks
    t_states = tuple(torch.randn(2, 5, 8) for _ in range(6 + 1))  # teacher: 6 blocks
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    parts = encoder_losses(SimpleNamespace(last_hidden_state=s_states[-1], hidden_states=s_states),
                           SimpleNamespace(last_hidden_state=t_states[-1], hidden_states=t_states),
                           {"attention_mask": mask}, LossWeights(cosine=0.0, layers=1.0), "mean")
    ref = torch.zeros(2)
    for i, j in ((1, 2), (2, 4), (3, 6)):  # student block i stands for teacher block i * 6 / 3
        s, t = s_states[i], t_states[j]
        scale = sum(float(t[b, :int(mask[b].sum())].pow(2).mean(-1).sum()) for b in range(2)) / float(mask.sum())
        for b in range(2):
            n = int(mask[b].sum())
            ref[b] += float((s[b, :n] - t[b, :n]).pow(2).mean()) / scale / 3
    assert torch.allclose(parts["layers"], ref, atol=1e-5)
    assert torch.allclose(parts["total"], parts["layers"])
    # causal: the same term over the windows' tokens
    logits = torch.randn(2, 5, 11)
    c = causal_losses(SimpleNamespace(logits=logits, hidden_states=s_states),
                      SimpleNamespace(logits=logits, hidden_states=t_states),
                      {"input_ids": torch.zeros(2, 5, dtype=torch.long), "attention_mask": mask},
                      LossWeights(kl=1.0, layers=1.0))
    assert torch.allclose(c["layers"], ref, atol=1e-5) and float(c["kl"].abs().max()) < 1e-6


def test_recovery_selects_on_fidelity_and_tracks_a_task_curve(tiny):
    original = tiny["bert"]
    student = copy.deepcopy(original)
    trim_model(student, TrimConfig(heads=0.5, ffn=0.5, score="magnitude", compensate="none"), None,
               original=original, progress=False)
    cfg = RecoverConfig(steps=12, batch_size=8, seq_len=32, holdout=30, lr=3e-3, eval_every=4, layers=1.0,
                        hidden=1.0, track=["stsb:test"])
    log = recover(student, original, cfg, progress=False)
    assert log.metric.startswith("fidelity") and log.higher_is_better
    held = build_train_set(original, [], 32, 30).heldout  # the same held-out texts, rebuilt
    hand = float(F.cosine_similarity(encode(student, held), encode(original, held), dim=-1).mean())
    assert log.after == pytest.approx(hand, abs=1e-5)
    assert log.after > log.before
    evals = [h for h in log.history if "eval" in h]
    assert [h["step"] for h in evals] == [4, 8, 12]
    assert all(set(h["track"]) == {"Spearman x100 on stsb:test"} for h in evals)
    assert set(log.data["mixture"]) == {"stsb:train", "sst2:train", "wikitext2:validation"}


def test_track_is_refused_for_causal_models(tiny):
    cfg = RecoverConfig(steps=2, batch_size=2, seq_len=32, holdout=2, data=["wikitext2:validation"],
                        track=["stsb:test"])
    with pytest.raises(ConfigValueError, match="track"):
        recover(copy.deepcopy(tiny["llama"]), tiny["llama"], cfg, progress=False)


def test_encoder_fidelity_per_domain_and_interchangeability(tiny):
    m = tiny["bert"]
    same = encoder_fidelity(m, m, per_set=50)
    assert set(same.extra["sets"]) == {"stsb/test", "wikitext2/test", "sst2/dev"}
    assert same.value == pytest.approx(1.0, abs=1e-5) and same.extra["interchangeable"]
    other = _perturbed(m)
    r = encoder_fidelity(other, m, per_set=50)
    texts = list(dict.fromkeys(split_sentences(bundled_path("wikitext2", "test").read_text())))[:50]
    cos = F.cosine_similarity(encode(other, texts), encode(m, texts), dim=-1)
    assert r.extra["sets"]["wikitext2/test"]["mean"] == pytest.approx(float(cos.mean()), abs=1e-5)
    assert r.extra["sets"]["wikitext2/test"]["p01"] == pytest.approx(float(cos.quantile(0.01)), abs=1e-5)
    assert not r.extra["interchangeable"]


def _perturbed(m, scale: float = 0.3):
    other = copy.deepcopy(m)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in other.module.parameters():
            p.add_(scale * torch.randn_like(p) * p.std())
    return other


def test_compress_report_shows_fidelity_per_domain_and_says_to_re_embed(tiny, tmp_path, monkeypatch):
    import importlib
    C = importlib.import_module("slimformer.compress")  # the module (the package exports a function of that name)
    from slimformer import compress
    from test_compress import QUICK_BENCH
    # a tiny random BERT's pooled embeddings barely move under any stage: perturb the compressed
    # model where the report measures it, so the real measurement finds it not interchangeable
    monkeypatch.setattr(C, "encoder_fidelity", lambda model, ref: encoder_fidelity(_perturbed(model, 0.6), ref, per_set=50))
    recipe = {"stages": [{"prune": {"method": "magnitude", "sparsity": 0.5}}],
              "evaluate": {"split": "dev", "fidelity": True}, "bench": QUICK_BENCH}
    r = compress(tiny["bert"], recipe, out=tmp_path / "out", progress=False)
    report = (tmp_path / "out" / "report.md").read_text()
    for name in ("stsb/test", "wikitext2/test", "sst2/dev"):
        assert f"fidelity on {name}" in report
    sets = r.fidelity["extra"]["sets"]
    assert min(v["p01"] for v in sets.values()) < 0.95 and r.fidelity["extra"]["interchangeable"] is False
    assert "NOT interchangeable" in report and "re-embed" in report


def test_report_states_mixture_tracked_curve_and_selection_on_a_task(tiny, tmp_path):
    from slimformer import compress
    from test_compress import QUICK_BENCH
    recipe = {"stages": [{"recover": {"steps": 4, "batch_size": 4, "seq_len": 32, "holdout": 30, "eval_every": 2,
                                      "eval": "stsb:dev", "track": ["stsb:test"]}}],
              "evaluate": {"split": "dev", "fidelity": False}, "bench": QUICK_BENCH}
    r = compress(tiny["bert"], recipe, out=tmp_path / "out", progress=False)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Training text, mixed: stsb:train (" in report and "sst2:train (" in report
    assert "Spearman x100 on stsb:test (tracked, not used to select)" in report
    evals = [h for h in r.stages[0].history if "eval" in h]
    assert [h["step"] for h in evals] == [2, 4]
    row = f"| 4 | {evals[-1]['tokens']:,} |"
    assert row in report  # one table row per evaluation
    assert any("chose its checkpoint on a task score" in n for n in r.notes)
