"""Trim a causal LM: drop blocks (block influence vs measured loss), trim FFN and KV groups.

    python benchmarks/trim_decoder.py                  # SmolLM2-135M, every run below
    python benchmarks/trim_decoder.py --runs layers:6:block_influence layers:6:loss

A run is `layers:N:SCORE` (SCORE: block_influence | loss) or `width:FFN:KV:CRITERION` (FFN fraction
and KV groups removed per block, CRITERION: magnitude | activation | fluctuation | taylor).
Perplexity: WikiText-2 test (canonical file), first --windows windows of 1024 tokens, the
foundation's protocol, original in the same run. Calibration: --samples windows of 1024 tokens
from WikiText-2 validation (seed 0); the loss-based choice and Taylor use the first --grad-samples.
Decode tokens/s (32-token prompt, 128 greedy tokens, batch 1, 1 thread) is measured for width
runs against the original in alternating rounds, best of each.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

import slimformer
from slimformer.bench.env import environment
from slimformer.bench.memory import RssPeak
from slimformer.trim import TrimConfig, trim_model

from common import append_row, decode_ratio, quality

DEFAULT_RUNS = ["layers:6:block_influence", "layers:6:loss", "width:0.25:1:fluctuation",
                "width:0.25:1:magnitude", "width:0.25:1:taylor"]


def parse_run(text: str, args) -> TrimConfig:
    parts = text.split(":")
    common = dict(grad_samples=args.grad_samples, compensate=args.compensate)
    if parts[0] == "layers":
        return TrimConfig(layers=float(parts[1]), layer_score=parts[2], layer_candidates=args.candidates, **common)
    return TrimConfig(ffn=float(parts[1]), kv_heads=float(parts[2]), score=parts[3], **common)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--runs", nargs="+", default=DEFAULT_RUNS)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--grad-samples", type=int, default=4)
    p.add_argument("--candidates", type=int, default=10, help="loss: lowest-influence blocks measured per round")
    p.add_argument("--windows", type=int, default=64)
    p.add_argument("--compensate", default="reconstruct", help="reconstruct | bias | none (width runs)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/trim_decoder.jsonl")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base = slimformer.load(args.model)
    ref = quality(base, args.windows)
    print(f"original: {ref:.3f}", flush=True)
    cal = {"samples": args.samples, "seq_len": 1024}
    rows = []
    for text in args.runs:
        cfg = parse_run(text, args)
        m = copy.deepcopy(base)
        t0 = time.perf_counter()
        with RssPeak() as mem:
            log = trim_model(m, cfg, cal, original=base, progress=False)
        wall = time.perf_counter() - t0
        ppl = quality(m, args.windows)
        row = {"model": args.model, "run": text, "compensate": args.compensate, "ppl": ppl, "ppl_original": ref, "trim_s": wall,
               "peak_rss_increase_bytes": mem.increase, "params_ratio": log.params_ratio,
               "dropped": log.layers_dropped, "standard": log.standard,
               "calibration": log.calibration, "threads": args.threads, "environment": environment()}
        if text.startswith("width"):
            row["decode_original"], row["decode_trimmed"] = decode_ratio(base, m, args.rounds)
            row["decode_ratio"] = row["decode_trimmed"] / row["decode_original"]
        append_row(args.out, row)
        rows.append(row)
        print(f"{text:<28} ppl {ppl:9.3f}  params {row['params_ratio']:.3f}  {wall:6.0f} s  "
              f"dropped {row['dropped']}  decode x{row.get('decode_ratio', float('nan')):.2f}", flush=True)
    print(f"\n{args.model}, WikiText-2 test, {args.windows} windows x 1024 (original {ref:.3f}), one-shot")
    print("| run | ppl | params vs original | decode tokens/s vs original | blocks dropped | trim wall |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        dec = f"{r['decode_ratio']:.2f}x ({r['decode_trimmed']:.1f} vs {r['decode_original']:.1f})" \
            if "decode_ratio" in r else "-"
        print(f"| {r['run']} | {r['ppl']:.2f} | {r['params_ratio']:.3f} | {dec} | {r['dropped'] or '-'} | "
              f"{r['trim_s']:.0f} s |")


if __name__ == "__main__":
    main()
