"""Whole-text tokenization, remembered per (tokenizer, text) within a process.

Why: perplexity, calibration and recovery all tokenize whole files (WikiText-2 test is 1.3 MB,
about 1.5 s per pass here), and one `compress` run does it for the original and again for the
compressed model with the same tokenizer. The key is a digest of the text and of the fast
tokenizer's full serialisation (vocabulary, merges, normalizer, special-token post-processor),
so a changed tokenizer or text never reads a stale entry. Slow (Python) tokenizers are not cached.
"""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict

import torch

_CACHE: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
_ENTRIES = 4  # a few files x tokenizers; ids of WikiText-2 test are ~2.4 MB


def _tokenizer_digest(tokenizer) -> str | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    for transient in ("truncation", "padding"):  # set and reset by each call; ids of a plain call ignore them
        spec.pop(transient, None)
    h = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    # flags some tokenizer classes apply in Python rather than in the serialised pipeline
    for flag in ("add_bos_token", "add_eos_token", "do_lower_case"):
        h.update(f"{flag}={getattr(tokenizer, flag, None)}".encode())
    h.update(type(tokenizer).__name__.encode())
    return h.hexdigest()


def text_ids(tokenizer, text: str) -> torch.Tensor:
    """The 1-D token ids of `text` with the tokenizer's defaults (special tokens included)."""
    digest = _tokenizer_digest(tokenizer)
    key = (digest, hashlib.sha256(text.encode()).hexdigest()) if digest else None
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key].clone()
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    if key is not None:
        _CACHE[key] = ids.clone()
        while len(_CACHE) > _ENTRIES:
            _CACHE.popitem(last=False)
    return ids
