"""bench(model): speed, memory and size on this machine; compare(a, b): both back to back."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..errors import ConfigValueError
from ..model import Model
from ..results import BenchResult, Comparison
from .env import environment
from .memory import RssPeak
from ..model.info import param_count
from .size import saved_size, weight_bytes
from .workloads import causal_throughput, decode, encoder_throughput, latency_grid


@dataclass
class BenchConfig:
    threads: int | None = None  # None: torch's default (all cores)
    batch_sizes: tuple[int, ...] | None = None  # default: (1, 8, 32) encoders, (1, 4) causal LMs
    seq_lens: tuple[int, ...] | None = None  # default: (32, 128) encoders, (128, 512) causal LMs
    warmup: int = 2
    repeats: int = 10
    data: str | None = None  # throughput data: stsb (encoders) / wikitext2 (causal)
    split: str = "test"  # its split (tune benches on validation text: a search never reads test)
    throughput_batch: int = 32
    throughput_items: int | None = None  # default: every STS-B test sentence / 8 windows
    throughput_seq_len: int = 512
    throughput_passes: int = 2
    decode_prompt: int = 32
    decode_new_tokens: int = 128
    decode_repeats: int = 2
    skip_decode: bool = False  # causal LMs: leave out the decode figure (a tune not timing it)

    def validate(self) -> None:
        for name in ("warmup", "repeats", "throughput_batch", "throughput_passes",
                     "decode_prompt", "decode_new_tokens", "decode_repeats"):
            minimum = 0 if name == "warmup" else 1
            if getattr(self, name) < minimum:
                raise ConfigValueError(f"bench {name} must be at least {minimum} (got {getattr(self, name)})")
        if self.threads is not None and self.threads < 1:
            raise ConfigValueError(f"--threads must be at least 1 (got {self.threads})")


def bench(model: Model, config: BenchConfig | None = None) -> BenchResult:
    cfg = config or BenchConfig()
    cfg.validate()
    previous = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _bench(model, cfg)
    finally:
        torch.set_num_threads(previous)


LAZY_NOTE = ("not measured: the model is loaded lazily (blocks read from disk as used), so a timing would "
             "measure disk reads; load it whole to time it")


def _bench(model: Model, cfg: BenchConfig) -> BenchResult:
    t0 = time.perf_counter()
    causal = model.is_causal
    if model.lazy is not None:  # sizes only
        return BenchResult(
            model=model.name, kind=model.kind, params=param_count(model), size_bytes=saved_size(model),
            weight_bytes=weight_bytes(model), latency=[], decode=None, peak_rss_bytes=0, peak_rss_increase_bytes=0,
            throughput={"items_per_s": None, "unit": "items/s", "items": 0, "batch": 0, "passes": 0, "data": LAZY_NOTE},
            threads=torch.get_num_threads(), environment=environment(), wall_s=time.perf_counter() - t0)
    batch_sizes = cfg.batch_sizes or ((1, 4) if causal else (1, 8, 32))
    seq_lens = cfg.seq_lens or ((128, 512) if causal else (32, 128))
    data = cfg.data or ("wikitext2" if causal else "stsb")
    with RssPeak() as mem:
        latency = latency_grid(model, batch_sizes, seq_lens, cfg.warmup, cfg.repeats)
        if causal:
            throughput = causal_throughput(model, data, cfg.throughput_seq_len, cfg.throughput_items,
                                           cfg.throughput_passes, cfg.split)
            # A scoring-only runtime (the ONNX decoder graph has no KV cache) has no decode figure.
            dec = decode(model, data, cfg.decode_prompt, cfg.decode_new_tokens, cfg.decode_repeats, cfg.split) \
                if getattr(model.module, "can_decode", True) and not cfg.skip_decode else None
        else:
            throughput = encoder_throughput(model, data, cfg.throughput_batch, cfg.throughput_items,
                                            cfg.throughput_passes, cfg.split)
            dec = None
    return BenchResult(
        model=model.name, kind=model.kind, params=param_count(model), size_bytes=saved_size(model),
        weight_bytes=weight_bytes(model), latency=latency, throughput=throughput, decode=dec,
        peak_rss_bytes=mem.peak, peak_rss_increase_bytes=mem.increase,
        threads=torch.get_num_threads(), environment=environment(), wall_s=time.perf_counter() - t0)


def compare(base: Model, other: Model, config: BenchConfig | None = None) -> Comparison:
    """Bench `base` then `other` in this process, same settings; ratios are other / base."""
    a = bench(base, config)
    b = bench(other, config)
    return Comparison(base=a, other=b, ratios=ratios(a, b))


def ratios(a: BenchResult, b: BenchResult) -> dict:
    timed = a.throughput["items_per_s"] and b.throughput["items_per_s"]
    out = {
        "throughput": b.throughput["items_per_s"] / a.throughput["items_per_s"] if timed else None,
        "size": b.size_bytes / a.size_bytes,
        "params": b.params / a.params,
        "latency_speedup": {f"b{p.batch}x{p.seq_len}": p.median_ms / q.median_ms
                            for p, q in zip(a.latency, b.latency)},
    }
    if a.decode and b.decode:
        out["decode_tokens_per_s"] = b.decode["tokens_per_s"] / a.decode["tokens_per_s"]
    return out


__all__ = ["BenchConfig", "bench", "compare", "ratios"]
