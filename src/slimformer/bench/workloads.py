"""The three timed workloads: a latency grid, throughput on real data, greedy decoding."""
from __future__ import annotations

import time

import torch

from ..data import read_sentences, read_text, resolve_data
from ..evaluate.embed import embed_batch, tokenize_sentences
from ..evaluate.windows import token_windows
from ..model import Model
from ..results import LatencyPoint
from .timing import median, p90, synchronize, time_ms


def _vocab(model: Model) -> int:
    return min(model.module.config.vocab_size, len(model.tokenizer))


def _on(model: Model, value):
    """Inputs moved to a module on an accelerator before the timer starts (timing.py synchronises)."""
    dev = getattr(model, "device", None)
    if dev is None or dev.type == "cpu":
        return value
    if isinstance(value, dict):
        return {k: v.to(dev) if torch.is_tensor(v) else v for k, v in value.items()}
    return value.to(dev)


def _forward(model: Model, ids: torch.Tensor, mask: torch.Tensor | None = None):
    if model.is_causal:
        return model.module(input_ids=ids, use_cache=False).logits
    mask = torch.ones_like(ids) if mask is None else mask
    out = model.module(input_ids=ids, attention_mask=mask)
    # a runtime graph may hold only the sentence embedding (a peer's conversion, benchmarks/)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out.sentence_embedding


@torch.inference_mode()
def latency_grid(model: Model, batch_sizes, seq_lens, warmup: int, repeats: int) -> list[LatencyPoint]:
    gen = torch.Generator().manual_seed(0)
    points = []
    for seq in seq_lens:
        model.check_seq_len(seq)
        for bs in batch_sizes:
            ids = _on(model, torch.randint(5, _vocab(model), (bs, seq), generator=gen))
            ms = time_ms(lambda: _forward(model, ids), warmup, repeats)
            points.append(LatencyPoint(batch=bs, seq_len=seq, median_ms=median(ms), p90_ms=p90(ms),
                                       repeats=repeats))
    return points


@torch.inference_mode()
def encoder_throughput(model: Model, data: str, batch: int, items: int | None, passes: int,
                       split: str = "test") -> dict:
    sentences = read_sentences(resolve_data(data, split))[:items]
    ordered = sorted(sentences, key=len)  # length-bucketed batches, as sentence encoders serve
    batches = [_on(model, tokenize_sentences(model, ordered[i:i + batch])) for i in range(0, len(ordered), batch)]

    def run():
        for b in batches:  # the whole sentence pipeline: pooling, Dense layers, Normalize
            embed_batch(model, b)

    embed_batch(model, batches[0])  # warm-up
    best = min(time_ms(run, 0, passes)) / 1e3
    return {"items_per_s": len(sentences) / best, "unit": "sentences/s", "items": len(sentences),
            "batch": batch, "data": f"{data} test sentences, pre-tokenized, sorted by length",
            "passes": passes, "seconds": best}


@torch.inference_mode()
def causal_throughput(model: Model, data: str, seq_len: int, items: int | None, passes: int,
                      split: str = "test") -> dict:
    windows = _on(model, token_windows(model, read_text(resolve_data(data, split)), seq_len, items or 8))

    def run():
        for w in windows:
            _forward(model, w[None])

    _forward(model, windows[:1])
    best = min(time_ms(run, 0, passes)) / 1e3
    return {"items_per_s": windows.shape[0] / best, "unit": "windows/s",
            "tokens_per_s": windows.numel() / best, "items": int(windows.shape[0]), "batch": 1,
            "seq_len": seq_len, "data": f"{data} test, prefill of {seq_len}-token windows",
            "passes": passes, "seconds": best}


@torch.inference_mode()
def decode(model: Model, data: str, prompt_len: int, new_tokens: int, repeats: int, split: str = "test") -> dict:
    prompt = _on(model, token_windows(model, read_text(resolve_data(data, split)), prompt_len, 1))
    pad = model.tokenizer.pad_token_id
    kw = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
              min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad,
              temperature=None, top_p=None, top_k=None)
    model.module.generate(prompt, **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
    times = []
    for _ in range(repeats):
        synchronize()
        t0 = time.perf_counter()
        out = model.module.generate(prompt, **kw)
        synchronize()
        times.append(time.perf_counter() - t0)
    generated = out.shape[1] - prompt.shape[1]
    best = min(times)
    return {"tokens_per_s": generated / best, "prompt": prompt_len, "new_tokens": int(generated),
            "batch": 1, "greedy": True, "repeats": repeats, "seconds": best,
            "note": "new tokens / wall time of generate() (prompt prefill included), best of repeats"}
