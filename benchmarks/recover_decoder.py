"""Recover a compressed causal LM by distillation from the original, under a wall-clock budget.

    python benchmarks/recover_decoder.py --runs layers:6 --minutes 60
    python benchmarks/recover_decoder.py --runs sparsegpt:2:4 --minutes 60

A run is `ggml:MIX` (GPTQ onto llama.cpp's grids of that file type, e.g. ggml:q4_0, with
ggml_mix, 16 x 1024 calibration windows; recovery then trains on that fixed grid), `layers:N`
(drop N blocks by block influence, one-shot), `trim:N:F` (N blocks and a
fraction F of every kept block's FFN neurons, fluctuation scores with reconstruction) or `METHOD:N:M` / `METHOD:S`
(prune with slimformer's SparseGPT / Wanda / magnitude, default calibration: 64 x 1024 WikiText-2
validation windows). Then the recover stage: KL(teacher || student) of next-token distributions
on WikiText-2 validation windows (the last --holdout windows held out for the evaluations that
pick the best checkpoint), masks kept, at most --minutes of training.
Perplexity: WikiText-2 test (canonical file), first --windows windows of 1024 tokens, the
foundation's protocol, the original in the same run; "gap closed" = (one-shot - recovered) /
(one-shot - original). With --decode-rounds, decode tokens/s of the original and the recovered model
(batch 1, prompt 32, 128 greedy tokens, --decode-threads, alternating rounds, best of each).
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

import slimformer
from slimformer.bench.env import environment
from slimformer.prune.stage import PruneConfig, prune_model
from slimformer.quant import QuantizeConfig, quantize_model
from slimformer.recover import RecoverConfig, recover
from slimformer.trim import TrimConfig, trim_model

from common import append_row, decode_ratio, quality


def compress(base, run: str):
    parts = run.split(":")
    m = copy.deepcopy(base)
    if parts[0] == "ggml":
        quantize_model(m, QuantizeConfig(method="gptq", ggml_mix=parts[1]), {"samples": 16, "seq_len": 1024},
                       progress=False)
    elif parts[0] == "trim":
        trim_model(m, TrimConfig(layers=int(parts[1]), ffn=float(parts[2])), None, original=base, progress=False)
    elif parts[0] == "layers":
        trim_model(m, TrimConfig(layers=int(parts[1]), layer_score="block_influence"), None, original=base,
                   progress=False)
    else:
        pattern = f"{parts[1]}:{parts[2]}" if len(parts) == 3 else "unstructured"
        sparsity = float(parts[1]) if len(parts) == 2 else 0.5
        prune_model(m, PruneConfig(method=parts[0], sparsity=sparsity, pattern=pattern), progress=False)
    return m


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--runs", nargs="+", default=["layers:6", "sparsegpt:2:4"])
    p.add_argument("--minutes", type=float, default=60.0, help="training wall-clock budget per run")
    p.add_argument("--steps", type=int, default=400, help="schedule length (the budget may stop it sooner)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--holdout", type=int, default=8)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--train", default="blocks", choices=["blocks", "all"])
    p.add_argument("--windows", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--decode-rounds", type=int, default=0, help="also measure decode tokens/s (0: skip)")
    p.add_argument("--decode-threads", type=int, default=1)
    p.add_argument("--out", default="runs/recover_decoder.jsonl")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base = slimformer.load(args.model)
    dense = quality(base, args.windows)
    print(f"original: {dense:.2f}", flush=True)
    for run in args.runs:
        t0 = time.perf_counter()
        m = compress(base, run)
        compress_s = time.perf_counter() - t0
        one_shot = quality(m, args.windows)
        print(f"{run} one-shot: {one_shot:.2f} ({compress_s:.0f} s)", flush=True)
        cfg = RecoverConfig(steps=args.steps, batch_size=args.batch, micro_batch=args.micro_batch,
                            seq_len=args.seq_len, lr=args.lr, eval_every=args.eval_every, holdout=args.holdout,
                            max_minutes=args.minutes, precision=args.precision, train=args.train, save_every=0)
        log = recover(m, base, cfg, progress=True)
        recovered = quality(m, args.windows)
        closed = (one_shot - recovered) / (one_shot - dense)
        row = {"model": args.model, "run": run, "dense": dense, "one_shot": one_shot, "recovered": recovered,
               "gap_closed": closed, "steps": log.steps, "tokens": log.tokens,
               "train_wall_s": log.train_wall_s, "best_step": log.best_step,
               "heldout_before": log.before, "heldout_after": log.after, "stopped_by_time": log.stopped_by_time,
               "settings": {k: v for k, v in vars(args).items() if k != "runs"},
               "masked_fraction": log.masked_fraction, "windows": args.windows, "environment": environment()}
        if args.decode_rounds:
            row["decode_original"], row["decode_recovered"] = decode_ratio(base, m, args.decode_rounds,
                                                                           args.decode_threads)
            row["decode_ratio"] = row["decode_recovered"] / row["decode_original"]
            print(f"decode x{row['decode_ratio']:.2f} ({row['decode_recovered']:.1f} vs "
                  f"{row['decode_original']:.1f} tokens/s, {args.decode_threads} thread)", flush=True)
        append_row(args.out, row)
        print(f"| {run} | {dense:.2f} | {one_shot:.2f} | {recovered:.2f} | {closed:.0%} | {log.steps} steps, "
              f"{log.tokens:,} tokens, {log.train_wall_s / 60:.1f} min |", flush=True)


if __name__ == "__main__":
    main()
