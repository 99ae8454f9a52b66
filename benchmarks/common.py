"""What the peer benchmarks share: the quality protocol, the calibration rows handed to a peer,
and one JSON line per run."""
from __future__ import annotations

import json
from pathlib import Path

import torch

import slimformer


def add_peer_arguments(p, out: str) -> None:
    """The options every peer comparison takes besides its runs: model, calibration, protocol."""
    p.add_argument("--peer", action="store_true", help="also run llm-compressor (pip install -e .[bench])")
    add_calibration_arguments(p)
    p.add_argument("--out", default=out)


def add_calibration_arguments(p) -> None:
    """Model, calibration windows and seed, evaluation windows, threads."""
    p.add_argument("--model", default="smollm2")
    p.add_argument("--samples", type=int, default=None, help="calibration samples (default: 64 windows / 1024 sentences)")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0, help="calibration sampling seed (both tools get the same windows)")
    p.add_argument("--windows", type=int, default=64, help="perplexity windows of the test text")
    p.add_argument("--threads", type=int, default=None)


def quality(model, windows: int, seq_len: int = 1024) -> float:
    """WikiText-2 test perplexity (causal LMs) or STS-B test Spearman x100 (encoders)."""
    if model.is_causal:
        return slimformer.evaluate(model, "ppl", data="wikitext2", split="test", seq_len=seq_len,
                                   max_windows=windows, progress=False).value
    return slimformer.evaluate(model, "sts", split="test", progress=False).value


def metric_name(model) -> str:
    return "ppl (WikiText-2 test)" if model.is_causal else "STS-B test Spearman x100"


def decode_ratio(base, model, rounds: int, threads: int = 1) -> tuple[float, float]:
    """Best decode tokens/s (32-token prompt, 128 greedy tokens, batch 1) of the original and
    the compressed model at `threads`, in alternating rounds."""
    from slimformer.bench.workloads import decode
    cores = torch.get_num_threads()
    torch.set_num_threads(threads)
    best = {"base": 0.0, "trim": 0.0}
    try:
        for _ in range(rounds):  # alternating: a fixed order favours whichever runs later
            for key, m in (("base", base), ("trim", model)):
                best[key] = max(best[key], decode(m, "wikitext2", 32, 128, 1)["tokens_per_s"])
    finally:
        torch.set_num_threads(cores)
    return best["base"], best["trim"]


def peer_dataset(calib):
    """slimformer's calibration sequences (padding removed) as a `datasets.Dataset` for a peer."""
    from datasets import Dataset
    rows = []
    for b in calib.batches:
        mask = b.get("attention_mask", torch.ones_like(b["input_ids"]))
        rows += [ids[m.bool()].tolist() for ids, m in zip(b["input_ids"], mask)]
    return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})


def append_row(path: str, row: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def fastest_encoders(models, rounds: int, passes: int) -> dict[str, tuple[float, float]]:
    """name -> (best sentences/s on STS-B test in batches of 32, best batch-1 x 32 latency ms).
    Rounds alternate the variants: later runs in a process tend to be faster, so one pass in a
    fixed order would favour whichever comes last."""
    from slimformer.bench.workloads import encoder_throughput, latency_grid
    best: dict[str, tuple[float, float]] = {}
    for _ in range(rounds):
        for name, model in models:
            thr = encoder_throughput(model, "stsb", 32, None, passes)["items_per_s"]
            lat = latency_grid(model, [1], [32], warmup=3, repeats=20)[0].median_ms
            old = best.get(name, (0.0, float("inf")))
            best[name] = (max(old[0], thr), min(old[1], lat))
    return best
