"""Plain result dataclasses: every evaluate / bench / compress call returns one; reports are built
only from these, and each serialises to JSON."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path


def json_safe(obj):
    """`obj` with every NaN / inf float replaced by None: JSON has no NaN, and Python's bare `NaN`
    token breaks strict readers. Tables format the raw value (`n/a (NaN)`); the JSON says null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def dumps(obj, **kw) -> str:
    """Strict JSON (no NaN / Infinity tokens); values JSON cannot hold are written as strings."""
    return json.dumps(json_safe(obj), allow_nan=False, default=str, **kw)


class _Serialisable:
    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        text = dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            from .atomic import atomic_file
            with atomic_file(path, overwrite=True) as tmp:
                tmp.write_text(text)
        return text


@dataclass
class EvalResult(_Serialisable):
    task: str  # "sts" | "ppl" | "fidelity"
    model: str
    metric: str  # name of `value`, e.g. "spearman_x100", "perplexity", "mean_cosine", "kl"
    value: float
    higher_is_better: bool
    data: str
    split: str | None
    n: int  # pairs, predicted tokens or sentences that the value averages over
    protocol: str  # how the number was obtained, in one sentence
    extra: dict = field(default_factory=dict)  # secondary metrics
    wall_s: float = 0.0


@dataclass
class LatencyPoint(_Serialisable):
    batch: int
    seq_len: int
    median_ms: float
    p90_ms: float
    repeats: int


@dataclass
class BenchResult(_Serialisable):
    model: str
    kind: str  # "encoder" | "causal"
    params: int
    size_bytes: int  # the model saved by slimformer (safetensors), as a user would ship it
    weight_bytes: int  # parameters and buffers in memory
    latency: list[LatencyPoint]
    throughput: dict  # {"items_per_s", "unit", "items", "batch", "data"}
    decode: dict | None  # causal LMs: {"tokens_per_s", "prompt", "new_tokens", "batch"}
    peak_rss_bytes: int  # process RSS peak during the benchmark
    peak_rss_increase_bytes: int  # peak RSS minus RSS before the benchmark (activations, workspace)
    threads: int
    environment: dict  # versions, CPU
    wall_s: float = 0.0


@dataclass
class Comparison(_Serialisable):
    """Two benches run back to back in one process; ratios are `other` relative to `base`."""
    base: BenchResult
    other: BenchResult
    ratios: dict  # throughput, decode tokens/s, latency speed-up per point, size, params


@dataclass
class ExportResult(_Serialisable):
    format: str  # "hf" | "onnx" | "gguf"
    model: str
    path: str
    bytes: int  # size of what was written (the file, or every file of the folder)
    details: dict = field(default_factory=dict)  # per format: tensor types, opset, quantized nodes...
    wall_s: float = 0.0
