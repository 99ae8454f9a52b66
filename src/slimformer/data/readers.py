"""Read a user's or a bundled data file: sentence pairs, plain text, or sentences.

Formats: TSV with a header (columns named score / sentence1 / sentence2, or sentence / text),
JSONL (one object a line with the same keys), or plain text.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    score: float


def _read(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text; convert it to UTF-8") from None
    if not text.strip():
        raise DataError(f"{path} is empty; pass a file with data in it")
    return text


def _lines(path: Path) -> list[str]:
    return _read(path).splitlines()


def _records(path: Path) -> list[dict]:
    """TSV (header row) or JSONL, as a list of dicts."""
    lines = [ln for ln in _lines(path) if ln.strip()]
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = []
        for i, ln in enumerate(lines, 1):
            try:
                rows.append(json.loads(ln))
            except json.JSONDecodeError:
                raise DataError(f"{path}:{i} is not valid JSON; use one JSON object per line") from None
        return rows
    header = lines[0].split("\t")
    rows = []
    for i, ln in enumerate(lines[1:], 2):
        cells = ln.split("\t")
        if len(cells) < len(header):
            raise DataError(f"{path}:{i} has {len(cells)} columns, the header has {len(header)}; "
                            "use tab-separated columns with a header row")
        rows.append(dict(zip(header, cells)))
    if not rows:
        raise DataError(f"{path} has a header but no rows")
    return rows


def read_pairs(path: Path) -> list[Pair]:
    """Sentence pairs with a similarity score (columns sentence1, sentence2, score)."""
    rows = _records(path)
    need = {"sentence1", "sentence2", "score"}
    if not need <= set(rows[0]):
        raise DataError(f"{path} needs columns {sorted(need)} (found {sorted(rows[0])})")
    pairs = []
    for i, r in enumerate(rows, 2):
        try:
            pairs.append(Pair(str(r["sentence1"]), str(r["sentence2"]), float(r["score"])))
        except (TypeError, ValueError):
            raise DataError(f"{path}: row {i} has a score that is not a number ({r['score']!r})") from None
    return pairs


def read_text(path: Path) -> str:
    """Running text: a plain file as is, or the 'text' field of JSONL rows joined by newlines."""
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = _records(path)
        if "text" not in rows[0]:
            raise DataError(f"{path} needs a 'text' field in each JSON line")
        return "\n".join(str(r["text"]) for r in rows)
    return _read(path)


def read_sentences(path: Path) -> list[str]:
    """Sentences: both sides of a pair file, the 'sentence'/'text' column, or non-blank lines."""
    if path.suffix.lower() in (".tsv", ".jsonl", ".json"):
        rows = _records(path)
        keys = set(rows[0])
        if {"sentence1", "sentence2"} <= keys:
            return [s for r in rows for s in (r["sentence1"], r["sentence2"])]
        for key in ("sentence", "text"):
            if key in keys:
                return [str(r[key]) for r in rows]
        raise DataError(f"{path} needs a sentence, text or sentence1/sentence2 column (found {sorted(keys)})")
    return [ln.strip() for ln in _lines(path) if ln.strip()]


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str, min_words: int = 4) -> list[str]:
    """Running text's sentences of at least `min_words` words (WikiText headings skipped)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("="):
            out += [s for s in _SENTENCE_END.split(line) if len(s.split()) >= min_words]
    return out


def text_sentences(path: Path) -> list[str]:
    """Sentences of any data file: a table's sentence columns, running text split into sentences."""
    if path.suffix.lower() in (".tsv", ".jsonl", ".json"):  # the tables read_sentences reads
        return read_sentences(path)
    return split_sentences(read_text(path))
