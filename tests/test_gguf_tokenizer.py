"""Tokenizers built from a GGUF's own vocabulary (model/gguf_tokenizer.py): the SentencePiece-BPE
build against a reference loop written here from llama.cpp's algorithm, and the tokenizers of
the embedded GGUF models against llama.cpp's own tokenizer of the same file on real text."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from conftest import DATA
from slimformer.model.gguf_tokenizer import BYTE, CONTROL, NORMAL, SPACE, GGUFVocab, cached_tokenizer, \
    tokenizer_from_vocab


def _spm_reference(text: str, scores: dict[str, float], ids: dict[str, int]) -> list[int]:
    """llama.cpp's SentencePiece-BPE: escape spaces, start from characters, join the adjacent pair
    whose join is a token with the highest score (leftmost on ties) until none is; pieces that
    are no token become their UTF-8 bytes."""
    pieces = list(text.replace(" ", SPACE))
    while True:
        best = None
        for i in range(len(pieces) - 1):
            joined = pieces[i] + pieces[i + 1]
            if joined in scores and (best is None or scores[joined] > best[0]):
                best = (scores[joined], i)
        if best is None:
            break
        i = best[1]
        pieces[i:i + 2] = [pieces[i] + pieces[i + 1]]
    out = []
    for p in pieces:
        out += [ids[p]] if p in ids else [ids[f"<0x{b:02X}>"] for b in p.encode()]
    return out


def _random_vocab(rng: random.Random) -> GGUFVocab:
    alphabet = list("abcde") + [SPACE, "é"]  # "z" and "ü" stay out: they fall back to bytes
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + alphabet
    types = [CONTROL] * 3 + [BYTE] * 256 + [NORMAL] * len(alphabet)
    seen = set(tokens)
    while len(tokens) < 400:
        t = "".join(rng.choice(alphabet) for _ in range(rng.randint(2, 5)))
        if t not in seen:
            seen.add(t)
            tokens.append(t)
            types.append(NORMAL)
    scores = [0.0] * 259 + [-rng.random() * 1000 for _ in tokens[259:]]
    return GGUFVocab(model="llama", pre="default", tokens=tokens, merges=[], scores=scores, types=types,
                     special={"unk": 0, "bos": 1, "eos": 2}, add_bos=True, add_eos=False, add_space_prefix=False)


def test_spm_bpe_joins_pairs_as_llama_cpp_does():
    rng = random.Random(0)
    vocab = _random_vocab(rng)
    tok = tokenizer_from_vocab(vocab)
    ids = {t: i for i, t in enumerate(vocab.tokens)}
    scores = {t: s for t, s, ty in zip(vocab.tokens, vocab.scores, vocab.types) if ty == NORMAL}
    texts = ["".join(rng.choice("abcde é zü") for _ in range(rng.randint(1, 40))) for _ in range(300)]
    mismatches = [t for t in texts if tok(t).input_ids != [1] + _spm_reference(t, scores, ids)]
    assert not mismatches, mismatches[:3]
    assert tok.decode(tok("abc zü é").input_ids, skip_special_tokens=True) == "abc zü é"


def _sentences() -> list[str]:
    lines = [l for l in (DATA / "wikitext2" / "wiki.valid.raw").read_text().splitlines() if l.strip()][:300]
    rows = [r.split("\t") for r in (DATA / "stsb" / "dev.tsv").read_text().splitlines()[1:]]
    sts = [c for r in rows for c in r if len(c) > 20 and not c.replace(".", "").isdigit()][:300]
    raw = (DATA / "wikitext2" / "wiki.test.raw").read_text()
    chunks = [raw[i:i + 3000] for i in range(0, len(raw), len(raw) // 20)][:20]  # newlines, runs of spaces
    return lines + sts + chunks


@pytest.mark.integration
@pytest.mark.parametrize("alias", ["smollm2", "gemma3"])
def test_tokenizer_matches_llama_cpps_on_real_text(alias):
    import llama_cpp  # a dependency: its absence is a failure, not a skip
    from slimformer.model.sources import resolve
    path = Path(resolve(alias).location)
    ours = cached_tokenizer(path)
    theirs = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    texts = _sentences()
    assert len(texts) >= 600
    bad = [t for t in texts if ours(t).input_ids != theirs.tokenize(t.encode(), add_bos=True, special=False)]
    assert not bad, f"{len(bad)} of {len(texts)} differ, e.g. {bad[0][:80]!r}"
