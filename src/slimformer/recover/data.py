"""Training data for recovery: any unlabeled text, in a fixed order that depends only on the seed.

Sources are bundled sets ("stsb:train", "wikitext2:validation"; a name alone takes its first
non-test split) or files. Causal LMs train on non-overlapping windows of the sources' token
stream; the last `holdout` windows are held out for evaluation and never trained on. Encoders
train on sentences (pair files give both sides; running text is split into sentences of at
least 4 words); a held-out slice is kept too, and evaluation may instead use a labelled pair
file (STS-B dev by default).

The order is a function of (seed, position): example number p of the run is
perm_{p // n}[p % n] with perm_e = randperm(n, seed + e). A resumed run, or a run split over
several processes, therefore sees exactly the examples one uninterrupted process would.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..data import read_sentences, read_text, resolve_data
from ..data.bundled import BUNDLED
from ..data.tokens import text_ids
from ..errors import DataError
from ..model import Model

DEFAULT_SOURCES = {"causal": ["wikitext2:validation"], "encoder": ["stsb:train", "wikitext2:validation"]}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def names_test_split(spec: str) -> bool:
    """Whether 'name:split' names a bundled set's test split (checked when the recipe is parsed)."""
    name, _, split = str(spec).partition(":")
    return name in BUNDLED and split == "test"


def resolve_source(spec: str):
    """'name[:split]' of a bundled set, or a file path; the test split is refused."""
    name, _, split = str(spec).partition(":")
    if name in BUNDLED:
        split = split or next(s for s in BUNDLED[name] if s != "test")
        if names_test_split(f"{name}:{split}"):
            raise DataError(f"recovery must not train on the test split ({spec}); use train or validation")
        return resolve_data(name, split)
    return resolve_data(spec, "train")


def _sentences(path) -> list[str]:
    if path.suffix.lower() in (".tsv", ".jsonl", ".json"):
        return read_sentences(path)
    out = []
    for line in read_text(path).splitlines():
        line = line.strip()
        if not line or line.startswith("="):  # WikiText headings
            continue
        out += [s for s in _SENTENCE_END.split(line) if len(s.split()) >= 4]
    return out


@dataclass
class TrainSet:
    examples: object  # causal: LongTensor [n, seq_len]; encoders: list[str]
    heldout: object  # same kind, never trained on
    seq_len: int
    sources: list[str]

    def __len__(self) -> int:
        return len(self.examples)

    def indices(self, start: int, count: int, seed: int) -> list[int]:
        """Example indices at run positions [start, start + count)."""
        n = len(self)
        out, cache = [], {}
        for p in range(start, start + count):
            epoch = p // n
            if epoch not in cache:
                cache[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
            out.append(cache[epoch][p % n])
        return out

    def batch(self, model: Model, idx: list[int]) -> dict:
        if isinstance(self.examples, torch.Tensor):
            return {"input_ids": self.examples[idx]}
        return tokenize(model, [self.examples[i] for i in idx], self.seq_len)


def tokenize(model: Model, sentences: list[str], seq_len: int) -> dict:
    max_len = min(seq_len, model.pooling.max_length or model.arch.max_positions, model.arch.max_positions)
    return dict(model.tokenizer(sentences, padding=True, truncation=True, max_length=max_len,
                                return_tensors="pt"))


def build_train_set(model: Model, sources: list[str], seq_len: int, holdout: int) -> TrainSet:
    sources = list(sources) or DEFAULT_SOURCES[model.kind]
    paths = [resolve_source(s) for s in sources]
    if model.is_causal:
        seq_len = min(seq_len, model.arch.max_positions)
        model.check_seq_len(seq_len)
        ids = torch.cat([text_ids(model.tokenizer, read_text(p)) for p in paths])
        n = ids.numel() // seq_len
        if n <= holdout:
            raise DataError(f"the training text has {ids.numel()} tokens: {n} windows of {seq_len}, not more "
                            f"than the {holdout} held out; give more text or a smaller seq_len")
        windows = ids[: n * seq_len].view(n, seq_len)
        return TrainSet(windows[: n - holdout], windows[n - holdout:], seq_len, sources)
    sentences = list(dict.fromkeys(s for p in paths for s in _sentences(p)))  # unique, order kept
    if len(sentences) <= holdout:
        raise DataError(f"the training data has {len(sentences)} sentences, not more than the {holdout} "
                        "held out; give more data")
    order = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(1234)).tolist()
    sentences = [sentences[i] for i in order]
    cut = len(sentences) - holdout
    return TrainSet(sentences[:cut], sentences[cut:], seq_len, sources)
