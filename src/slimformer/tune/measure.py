"""How a tune judges a candidate: quality on validation data against the original's (never the
test split), and speed in the runtime it will be served from, as a ratio to the original measured
in the same process.

Encoders: STS Spearman on the dev pairs and, from the same embeddings, their mean cosine to the
original's (one encoding pass gives both). Causal LMs: perplexity on validation windows, and with
`min_fidelity` the top-1 agreement with the original's next-token choices.
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from scipy.stats import spearmanr

from ..bench import BenchConfig, bench
from ..data import read_pairs, resolve_data
from ..evaluate import evaluate
from ..evaluate.embed import encode
from ..model import Model
from .config import TuneConfig

PAIRS = 750  # validation pairs scored per candidate (1500 sentences), evenly spaced over the file
WINDOWS, WINDOW_LEN = 8, 512  # causal: validation windows per candidate
BENCH_ITEMS = 512  # validation sentences timed for throughput (each pass; decoders: windows, capped at 8)


@dataclass
class Quality:
    score: float  # STS x 100 (higher better) or perplexity (lower better)
    fidelity: float | None
    ok: bool  # within the budget
    shortfall: float  # how far outside the budget, in units of the budget (0 when ok)

    def to_dict(self) -> dict:
        return {"score": self.score, "fidelity": self.fidelity, "ok": self.ok, "shortfall": self.shortfall}


class Judge:
    def __init__(self, original: Model, cfg: TuneConfig, runtime: str):
        self.original, self.cfg, self.runtime = original, cfg, runtime
        self.causal = original.is_causal
        if self.causal:
            self.data = cfg.data or "wikitext2"
        else:
            pairs = read_pairs(resolve_data(cfg.data or "stsb", "dev"))
            # evenly spaced over the file: STS-B dev is ordered by genre (its first 750 pairs,
            # captions, score MiniLM 91.6 against 86.7 over all)
            self.pairs = pairs[::max(1, -(-len(pairs) // PAIRS))]
            self.reference = self._embed(original)
        self.base_quality = self._raw(original)
        self.base_speed = self.speed_value(original, runtime=self._base_runtime())

    # -- quality ---------------------------------------------------------------------------------
    def _embed(self, model: Model) -> tuple[torch.Tensor, torch.Tensor]:
        return encode(model, [p.a for p in self.pairs]), encode(model, [p.b for p in self.pairs])

    def _raw(self, model: Model) -> tuple[float, float | None]:
        if self.causal:
            seq = min(WINDOW_LEN, self.original.arch.max_positions)
            ppl = evaluate(model, "ppl", data=self.data, split="validation", seq_len=seq,
                           max_windows=WINDOWS, progress=False).value
            fid = None
            if self.cfg.min_fidelity is not None and model is not self.original:
                fid = evaluate(model, "fidelity", data=self.data, split="validation", reference=self.original,
                               seq_len=seq, max_windows=2, progress=False).value
            return ppl, fid
        a, b = (x.double() for x in self._embed(model))  # float64: a cosine of 1 - 1e-8 is not 1
        cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
        sts = float(spearmanr(cos.numpy(), [p.score for p in self.pairs]).statistic) * 100
        ra, rb = (x.double() for x in self.reference)
        fid = float(torch.cat([torch.nn.functional.cosine_similarity(a, ra, dim=-1),
                               torch.nn.functional.cosine_similarity(b, rb, dim=-1)]).mean())
        return sts, fid

    def quality(self, model: Model) -> Quality:
        score, fid = self._raw(model)
        return self.judge(score, fid)

    def judge(self, score: float, fid: float | None) -> Quality:
        base, cfg = self.base_quality[0], self.cfg
        short = []
        if cfg.max_drop is not None:
            short.append(max(0.0, (base - score) - cfg.max_drop) / max(cfg.max_drop, 0.1))
        if cfg.max_ppl_ratio is not None:
            short.append(max(0.0, score / base - cfg.max_ppl_ratio) / (cfg.max_ppl_ratio - 1 or 0.01))
        if cfg.min_fidelity is not None:
            f = 0.0 if fid is None else fid
            short.append(max(0.0, cfg.min_fidelity - f) / max(1 - cfg.min_fidelity, 0.001))
        shortfall = max(short) if short else 0.0
        return Quality(score=score, fidelity=fid, ok=shortfall == 0.0, shortfall=shortfall)

    def quality_key(self, q: Quality) -> float:
        """One number, higher better, for the search's quality objective."""
        return q.score if not self.causal else -math.log(q.score)

    # -- speed -----------------------------------------------------------------------------------
    def _base_runtime(self) -> str:
        """The original as the user runs it: a .gguf source in llama.cpp when that is the target,
        anything else in fp32 PyTorch (the ratio the README quotes)."""
        return "llama.cpp" if self.runtime == "llama.cpp" and self._source_gguf() else "torch"

    def _source_gguf(self):
        if not hasattr(self, "_gguf"):
            from ..export.gguf import source_gguf_of
            self._gguf = source_gguf_of(self.original)  # an alias or a dequantized folder names its .gguf too
        return self._gguf

    def bench_config(self) -> BenchConfig:
        obj = self.cfg.objective
        items = self._items() if obj == "throughput" else 1  # throughput not the objective: one item
        return BenchConfig(threads=self.cfg.threads, split="validation", warmup=1, repeats=5,
                           batch_sizes=(1,), seq_lens=(128,), throughput_items=items,
                           throughput_passes=2 if obj == "throughput" else 1, decode_new_tokens=64,
                           decode_repeats=2 if obj == "decode" else 1, skip_decode=obj != "decode",
                           throughput_seq_len=min(512, self.original.arch.max_positions))

    def _items(self) -> int:
        return BENCH_ITEMS if not self.causal else min(BENCH_ITEMS, 8)

    def speed_value(self, model: Model, runtime: str | None = None) -> float:
        """The objective's figure, higher better: items/s, 1 / batch-1 ms, tokens/s, 1 / bytes."""
        runtime = runtime or self.runtime
        with tempfile.TemporaryDirectory(prefix="slimformer-tune-") as tmp:
            served = self._served(model, runtime, Path(tmp))
            if self.cfg.objective == "size":
                return 1.0 / max(self._bytes(served, Path(tmp)), 1)
            r = bench(served, self.bench_config())
        if self.cfg.objective == "throughput":
            return float(r.throughput["items_per_s"])
        if self.cfg.objective == "latency":
            return 1000.0 / float(r.latency[0].median_ms)
        return float(r.decode["tokens_per_s"])

    def speed_ratio(self, model: Model) -> float:
        return self.speed_value(model) / self.base_speed

    def _served(self, model: Model, runtime: str, tmp: Path) -> Model:
        from ..export import export
        from ..runtime import open_model
        if runtime == "torch":
            return model
        if runtime == "llama.cpp" and model is self.original and self._source_gguf():
            return open_model(self._source_gguf())
        if runtime in ("onnxruntime", "openvino"):
            fmt = "onnx" if runtime == "onnxruntime" else "openvino"
            export(model, fmt, tmp / fmt)
            return open_model(tmp / fmt)
        export(model, "gguf", tmp / "model.gguf", dtype="q8_0")
        return open_model(tmp / "model.gguf")

    @staticmethod
    def _bytes(served: Model, tmp: Path) -> int:
        from ..bench.size import saved_size
        files = [p for p in tmp.rglob("*") if p.is_file()]
        return sum(p.stat().st_size for p in files) if files else saved_size(served)
