"""Data readers: bundled sets by name, users' TSV / JSONL / text files, and bad files."""
import json

import pytest
import torch
from conftest import DATA

from slimformer.data import bundled_path, read_pairs, read_sentences, read_text, resolve_data
from slimformer.errors import DataError


def test_bundled_sets_resolve_with_split_aliases():
    assert bundled_path("stsb", "test").name == "test.tsv"
    assert bundled_path("wikitext2", "valid").name == "wiki.valid.raw"
    assert bundled_path("wikitext2", "dev").name == "wiki.valid.raw"
    assert len(read_pairs(bundled_path("stsb", "test"))) == 1379
    assert len(read_pairs(bundled_path("stsb", "dev"))) == 1500


def test_wikitext_is_read_byte_for_byte():
    path = bundled_path("wikitext2", "test")
    assert read_text(path) == path.read_text(encoding="utf-8")


def test_unknown_set_and_split():
    with pytest.raises(DataError, match="bundled set"):
        resolve_data("imagenet", "test")
    with pytest.raises(DataError, match="splits"):
        bundled_path("sst2", "test")


def test_user_tsv_and_jsonl_pairs(tmp_path):
    tsv = tmp_path / "p.tsv"
    tsv.write_text("sentence2\tscore\tsentence1\nb\t1.5\ta\n")
    assert read_pairs(tsv)[0].a == "a" and read_pairs(tsv)[0].score == 1.5
    jl = tmp_path / "p.jsonl"
    jl.write_text(json.dumps({"sentence1": "x", "sentence2": "y", "score": 3}) + "\n")
    assert read_pairs(jl)[0].b == "y"
    assert read_sentences(jl) == ["x", "y"]


@pytest.mark.parametrize("content,match", [
    ("", "empty"),
    ("   \n\n", "empty"),
    ("sentence1\tsentence2\tscore\n", "no rows"),
    ("sentence1\tsentence2\tscore\na\tb\n", "columns"),
    ("sentence1\tsentence2\tscore\na\tb\tfive\n", "not a number"),
    ("s1\ts2\tscore\na\tb\t1\n", "needs columns"),
])
def test_bad_pair_files(tmp_path, content, match):
    f = tmp_path / "bad.tsv"
    f.write_text(content)
    with pytest.raises(DataError, match=match):
        read_pairs(f)


def test_bad_jsonl_and_missing_file(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(DataError, match="not valid JSON"):
        read_text(f)
    with pytest.raises(DataError, match="no such data file"):
        resolve_data(tmp_path / "missing.txt", "test")


def test_non_utf8(tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match="UTF-8"):
        read_text(f)


def test_whole_text_tokenization_is_remembered_but_never_stale(tiny_dir):
    from transformers import AutoTokenizer

    from slimformer.data import tokens
    tok = AutoTokenizer.from_pretrained(tiny_dir["llama"])
    text = (DATA / "wikitext2" / "wiki.valid.raw").read_text()[:50_000]
    first = tokens.text_ids(tok, text)
    assert torch.equal(first, tok(text, return_tensors="pt").input_ids[0])
    first[0] = -1  # callers get their own copy
    again = tokens.text_ids(AutoTokenizer.from_pretrained(tiny_dir["llama"]), text)  # a fresh load hits
    assert torch.equal(again, tok(text, return_tensors="pt").input_ids[0])
    tok.add_tokens([" = = "])  # a changed tokenizer is a different key
    changed = tokens.text_ids(tok, text)
    assert torch.equal(changed, tok(text, return_tensors="pt").input_ids[0]) and changed.numel() < again.numel()
    assert not torch.equal(tokens.text_ids(tok, text[:-100]), changed)  # so is a changed text
