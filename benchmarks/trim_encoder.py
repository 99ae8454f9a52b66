"""Trim an encoder (heads and FFN neurons), every criterion side by side, one process.

    python benchmarks/trim_encoder.py                          # all-MiniLM-L6-v2, 50 % heads + 50 % FFN, 1 thread
    python benchmarks/trim_encoder.py --heads 0.5 --ffn 0.5 --peer   # also Torch-Pruning's magnitude pruning

Each variant is scored on STS-B test (Spearman x100, one-shot: no retraining) and timed by the
same slimformer workload (STS-B test sentences, batches of 32 sorted by length; batch-1 latency at
32 tokens) in alternating rounds, best of each; ratios are against the original in the same run.
Calibration: slimformer's default for encoders (1024 STS-B train sentences, seed 0).
Peer (pip install -e .[bench]): Torch-Pruning's MetaPruner with its L2 magnitude importance,
pruning the same FFN and head fractions (hidden size kept), scored by the same protocol.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

import slimformer
from slimformer.bench.env import environment
from slimformer.bench.workloads import encoder_throughput, latency_grid
from slimformer.model.families import family
from slimformer.trim import TrimConfig, trim_model
from slimformer.trim.surgery import refresh

from common import append_row, quality

CRITERIA = ["magnitude", "activation", "fluctuation", "taylor"]


def torch_pruning_variant(base, heads: float, ffn: float):
    """Torch-Pruning (Fang et al. 2023) magnitude pruning of FFN neurons and heads, hidden size kept."""
    import torch_pruning as tp
    model = copy.deepcopy(base)
    mod = model.module
    arch = model.arch
    ids = model.tokenizer(["a short example sentence"], return_tensors="pt")
    num_heads, ignored, ratios = {}, [], {}
    for blk in arch.blocks:
        a = blk.attn
        for n in (a.q, a.k, a.v):
            num_heads[mod.get_submodule(n)] = a.n_heads
            ratios[mod.get_submodule(n)] = heads  # a group with ratio 0 is skipped, heads included
        ratios[mod.get_submodule(blk.ffn.up)] = ffn
        # Outputs of o and down are the hidden size: not pruned (only their input side follows).
        ignored += [mod.get_submodule(a.o), mod.get_submodule(blk.ffn.down)]
    if arch.pooler:
        ignored.append(mod.get_submodule(arch.pooler))
    pruner = tp.pruner.MetaPruner(
        mod, dict(ids), importance=tp.importance.MagnitudeImportance(p=2), global_pruning=False,
        pruning_ratio=0.0, pruning_ratio_dict=ratios, ignored_layers=ignored, num_heads=num_heads,
        prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=heads)
    pruner.step()
    for blk in arch.blocks:  # Torch-Pruning slices weights; the attention module's counts follow
        sa = mod.get_submodule(blk.attn.module)
        n = mod.get_submodule(blk.attn.q).out_features // blk.attn.head_dim
        family(arch).set_heads(sa, n, n, blk.attn.head_dim)
    refresh(model)
    return model


def variants(base, args):
    yield "original fp32", base, None, None
    for crit in args.criteria:
        for comp in args.compensate:
            m = copy.deepcopy(base)
            t0 = time.perf_counter()
            log = trim_model(m, TrimConfig(score=crit, heads=args.heads, ffn=args.ffn, compensate=comp,
                                           allocation=args.allocation), None, original=base, progress=False)
            yield f"slimformer {crit}, {comp}", m, time.perf_counter() - t0, log.params_ratio
    if args.peer:
        t0 = time.perf_counter()
        m = torch_pruning_variant(base, args.heads, args.ffn)
        yield "Torch-Pruning magnitude (L2)", m, time.perf_counter() - t0, None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--heads", type=float, default=0.5)
    p.add_argument("--ffn", type=float, default=0.5)
    p.add_argument("--criteria", nargs="+", default=CRITERIA)
    p.add_argument("--compensate", nargs="+", default=["reconstruct", "none"],
                   help="what the readers of removed channels do: reconstruct | bias | none")
    p.add_argument("--allocation", default="uniform")
    p.add_argument("--peer", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each variant counts")
    p.add_argument("--out", default="runs/trim_encoder.jsonl")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base = slimformer.load(args.model)
    models = list(variants(base, args))
    best: dict[str, tuple] = {}
    # Alternating rounds: later runs in a process tend to be faster; a fixed order would favour the last.
    for _ in range(args.rounds):
        for name, model, _, _ in models:
            thr = encoder_throughput(model, "stsb", 32, None, args.passes)["items_per_s"]
            lat = latency_grid(model, [1], [32], warmup=3, repeats=20)[0].median_ms
            old = best.get(name, (0.0, float("inf")))
            best[name] = (max(old[0], thr), min(old[1], lat))
    ref = best["original fp32"]
    rows = []
    for name, model, trim_s, params_ratio in models:
        params = sum(p.numel() for p in model.module.parameters())
        row = {"model": args.model, "variant": name, "heads": args.heads, "ffn": args.ffn,
               "spearman": quality(model, 0), "sentences_per_s": best[name][0],
               "throughput_ratio": best[name][0] / ref[0], "latency_b1x32_ms": best[name][1],
               "latency_ratio": ref[1] / best[name][1], "params": params, "trim_s": trim_s,
               "threads": args.threads, "rounds": args.rounds, "environment": environment()}
        append_row(args.out, row)
        rows.append(row)
        print(f"{name:<50} {row['spearman']:6.2f}  {row['throughput_ratio']:.2f}x  b1 {row['latency_ratio']:.2f}x",
              flush=True)
    print(f"\n{args.model}, heads {args.heads:g} + FFN {args.ffn:g} removed per block, one-shot, {args.threads} thread(s)")
    print("| variant | STS-B test Spearman | params | throughput vs original | b1x32 latency vs original | trim time |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        t = f"{r['trim_s']:.1f} s" if r["trim_s"] is not None else "-"
        print(f"| {r['variant']} | {r['spearman']:.2f} | {r['params'] / 1e6:.1f} M | {r['throughput_ratio']:.2f}x | "
              f"{r['latency_ratio']:.2f}x | {t} |")


if __name__ == "__main__":
    main()
