"""Training data for recovery: any unlabeled text, in a fixed order that depends only on the seed.

Sources are bundled sets ("stsb:train", "wikitext2:validation"; a name alone takes its first
non-test split) or files. Causal LMs train on non-overlapping windows of the sources' token
stream; the last `holdout` windows are held out for evaluation and never trained on.

Encoders train on text of every bundled kind by default (STS-B train pairs, SST-2 train
reviews, WikiText-2 validation articles), MIXED: each source gets an equal share of the
examples (a small source repeats, a large one is subsampled per epoch), so one domain cannot
decide the embedding space. Pair files give both sides; running text gives its sentences (at
least 4 words) and also its paragraphs, truncated at seq_len, so lengths cover the model's range
and not only single sentences. Every source keeps its own held-out slice (holdout / sources
examples each), never trained on: recovery selects its checkpoint on fidelity to the original
there (heldout.py), across every domain it trained on.

The order is a function of (seed, position): example number p of the run is
perm_{p // n}[p % n] with perm_e = randperm(n, seed + e). A resumed run, or a run split over
several processes, therefore sees exactly the examples one uninterrupted process would.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..data import read_sentences, read_text, resolve_data, split_sentences
from ..data.bundled import BUNDLED
from ..data.tokens import text_ids
from ..errors import DataError
from ..model import Model

DEFAULT_SOURCES = {"causal": ["wikitext2:validation"],
                   "encoder": ["stsb:train", "sst2:train", "wikitext2:validation"]}


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


def _units(path) -> list[list[str]]:
    """A source's training texts in units that are held out whole: a table's sentences one by one;
    running text by paragraph (its sentences and, when it has several, the paragraph itself), so
    no held-out paragraph shares a sentence with the training texts."""
    if path.suffix.lower() in (".tsv", ".jsonl", ".json"):
        return [[t] for t in read_sentences(path)]
    out = []
    for line in read_text(path).splitlines():
        parts = split_sentences(line)
        if parts:
            out.append(parts + ([line.strip()] if len(parts) > 1 else []))  # the paragraph: long inputs
    return out


@dataclass
class TrainSet:
    examples: object  # causal: LongTensor [n, seq_len]; encoders: list[str] (the mixture, with repeats)
    heldout: object  # same kind, never trained on
    seq_len: int
    sources: list[str]
    mixture: dict = field(default_factory=dict)  # encoders: {source: {"texts", "heldout", "share"}}

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

    def by_length(self, idx: list[int]) -> list[int]:
        """Encoders: the indices ordered by text length (stable), so each micro-batch pads to a
        similar length; windows are all one length and keep their order."""
        if isinstance(self.examples, torch.Tensor):
            return idx
        return sorted(idx, key=lambda i: len(self.examples[i]))

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
    return _encoder_mixture(sources, paths, seq_len, holdout)


def _encoder_mixture(sources: list[str], paths: list, seq_len: int, holdout: int) -> TrainSet:
    """Each source's units shuffled, the last ones (about holdout / len(sources) texts) held out,
    the other texts interleaved round-robin up to the largest source's count (equal shares, small
    sources repeat). Every text occurs in one unit only, the first that has it."""
    seen: set[str] = set()
    per_source = []
    each = max(1, holdout // len(paths))
    for spec, path in zip(sources, paths):
        units = []
        for unit in _units(path):  # every text once, in the first unit (of any source) that has it
            unit = [t for t in dict.fromkeys(unit) if t not in seen]
            seen.update(unit)
            if unit:
                units.append(unit)
        order = torch.randperm(len(units), generator=torch.Generator().manual_seed(1234)).tolist()
        train, held = [], []
        for i in reversed(order):  # held-out units from the end of the shuffled order
            (held if len(held) < each else train).extend(units[i])
        train.reverse()
        if not train or len(held) < each:
            raise DataError(f"recover data {spec}: {len(train) + len(held)} texts, not more than the {each} held "
                            "out from it; give more text or a smaller holdout")
        per_source.append((spec, train, held))
    longest = max(len(train) for _, train, _ in per_source)
    examples = [train[k % len(train)] for k in range(longest) for _, train, _ in per_source]
    heldout = [t for _, _, held in per_source for t in held]
    mixture = {spec: {"texts": len(train), "heldout": len(held), "share": round(1 / len(per_source), 4)}
               for spec, train, held in per_source}
    return TrainSet(examples, heldout, seq_len, sources, mixture)
