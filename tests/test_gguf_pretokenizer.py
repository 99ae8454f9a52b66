"""The pre-tokenizer a GGUF export names (export/gguf_pretokenizer.py): llama.cpp, tokenizing text
itself from the exported vocabulary, gives the HF tokenizer's token ids on text the probes never
held; a name that does not split that way is not chosen."""
from __future__ import annotations

import llama_cpp  # noqa: F401  (the export extra: missing, the module fails, never skips)
import pytest

from slimformer.data import resolve_data
from slimformer.export.gguf_pretokenizer import PROBES, _vocab_only_file, identify_pre
from slimformer.export.gguf_vocab import hf_vocab, write_vocab


def _held_out_texts(n: int = 40) -> list[str]:
    """Sentences of STS-B test and lines of WikiText-2 test: none of them a probe."""
    sts = [line.split("\t") for line in resolve_data("stsb", "test").read_text().splitlines()[1:n + 1]]
    wiki = [line for line in resolve_data("wikitext2", "test").read_text().splitlines() if line.strip()][:n]
    return [row[-2] for row in sts if len(row) >= 2] + wiki


def _llama_cpp_ids(tokenizer, pre: str, texts: list[str], tmp_path) -> list[list[int]]:
    vocab = hf_vocab(tokenizer, len(tokenizer))
    path = tmp_path / f"{pre}.gguf"
    _vocab_only_file(path, lambda w: write_vocab(w, vocab, pre))
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    return [llm.tokenize(t.encode("utf-8"), add_bos=False, special=False) for t in texts]


@pytest.mark.integration
def test_smollm2_hf_tokenizer_gets_the_pre_tokenizer_that_splits_like_it(smollm2, tmp_path):
    tok = smollm2.tokenizer
    vocab = hf_vocab(tok, len(tok))
    pre = identify_pre(tok, lambda w, name: write_vocab(w, vocab, name))
    assert pre == "smollm"  # what llama.cpp's own converter names SmolLM's tokenizer
    texts = _held_out_texts()
    assert not set(texts) & set(PROBES) and len(texts) > 60
    want = [tok(t, add_special_tokens=False).input_ids for t in texts]
    assert _llama_cpp_ids(tok, pre, texts, tmp_path) == want
    # the former fixed choice splits differently (contractions: "I've" is one piece to SmolLM)
    default = _llama_cpp_ids(tok, "default", PROBES, tmp_path)
    assert default != [tok(t, add_special_tokens=False).input_ids for t in PROBES]


def test_tiny_export_names_a_pre_tokenizer_llama_cpp_tokenizes_like_hf(tiny, tmp_path):
    from slimformer.export import export
    res = export(tiny["llama"], "gguf", tmp_path / "m.gguf", dtype="f32")
    # the tiny tokenizer is byte-level BPE with GPT-2's regex (tests/conftest.py): the probes tell
    # it from Llama-3's and SmolLM's splits, which are tried first
    assert "llama.cpp pre-tokenizer 'gpt-2'" in res.details["tokenizer"]
    tok = tiny["llama"].tokenizer
    llm = llama_cpp.Llama(str(tmp_path / "m.gguf"), vocab_only=True, verbose=False)
    texts = _held_out_texts(10)
    assert [llm.tokenize(t.encode("utf-8"), add_bos=False, special=False) for t in texts] == \
        [tok(t, add_special_tokens=False).input_ids for t in texts]
