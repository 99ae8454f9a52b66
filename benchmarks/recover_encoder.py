"""Trim an encoder, recover it by distillation, optionally quantize W8A8: quality and speed.

    python benchmarks/recover_encoder.py                          # MiniLM, 50 % heads + FFN, 1000 steps
    python benchmarks/recover_encoder.py --w8a8 ptq qat --qat-steps 300   # also W8A8 after recovery / with QAT

Variants, in one process: the original; the one-shot trim (FLAP fluctuation, least-squares refit);
the trim recovered by distillation (cosine between pooled embeddings, on STS-B train sentences
and WikiText-2 validation sentences, never the test split; the best of the STS-B dev evaluations
kept); with --w8a8 ptq: the recovered model quantized W8A8 (GPTQ after SmoothQuant 0.5, dynamic
per-tensor int8 activations, fbgemm); with --w8a8 qat: trim, W8A8, then recovery with the int8
grids fake-quantized (QAT) and converted back to integer kernels.
Quality: STS-B test Spearman x100. Speed: STS-B test sentences in batches of 32 sorted by length
and batch-1 latency at 32 tokens, --bench-threads threads, alternating rounds, best of each,
ratios against the original in the same run. Training runs with --threads threads.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses

import torch

import slimformer
from slimformer.bench.env import environment
from slimformer.bench.workloads import encoder_throughput, latency_grid
from slimformer.quant.stage import QuantizeConfig, quantize_model
from slimformer.recover import RecoverConfig, recover
from slimformer.trim import TrimConfig, trim_model

from common import append_row, quality

W8A8 = QuantizeConfig(method="gptq", bits=8, activations="dynamic", smoothquant=0.5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--heads", type=float, default=0.5)
    p.add_argument("--ffn", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--w8a8", nargs="*", default=[], choices=["ptq", "qat"])
    p.add_argument("--qat-steps", type=int, default=None, help="QAT steps (default: --steps)")
    p.add_argument("--threads", type=int, default=2, help="torch threads while training")
    p.add_argument("--bench-threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default="runs/recover_encoder.jsonl")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base = slimformer.load(args.model)
    rc = RecoverConfig(steps=args.steps, lr=args.lr, batch_size=args.batch, eval_every=args.eval_every)
    trim_cfg = TrimConfig(score="fluctuation", heads=args.heads, ffn=args.ffn, compensate="reconstruct")
    models = [("original fp32", base, None)]
    trimmed = copy.deepcopy(base)
    trim_model(trimmed, trim_cfg, None, original=base, progress=False)
    models.append(("trim one-shot", trimmed, None))
    recovered = copy.deepcopy(trimmed)
    log = recover(recovered, base, rc, progress=True)
    models.append(("trim + recover", recovered, log))
    if "ptq" in args.w8a8:
        m = copy.deepcopy(recovered)
        quantize_model(m, W8A8, progress=False)
        models.append(("trim + recover + W8A8", m, log))
    if "qat" in args.w8a8:
        m = copy.deepcopy(trimmed)
        quantize_model(m, W8A8, progress=False)
        qlog = recover(m, base, dataclasses.replace(rc, steps=args.qat_steps or args.steps), progress=True)
        models.append(("trim + W8A8 + recover (QAT)", m, qlog))
    torch.set_num_threads(args.bench_threads)
    best: dict[str, tuple] = {}
    for _ in range(args.rounds):  # alternating rounds: a fixed order would favour the last
        for name, model, _ in models:
            thr = encoder_throughput(model, "stsb", 32, None, 2)["items_per_s"]
            lat = latency_grid(model, [1], [32], warmup=3, repeats=20)[0].median_ms
            old = best.get(name, (0.0, float("inf")))
            best[name] = (max(old[0], thr), min(old[1], lat))
    ref = best["original fp32"]
    print(f"\n{args.model}, heads {args.heads:g} + FFN {args.ffn:g} trimmed, {args.steps} steps x {args.batch} "
          f"sentences, lr {args.lr:g}; speed at {args.bench_threads} thread(s)")
    print("| variant | STS-B test Spearman | throughput vs fp32 | b1x32 latency vs fp32 | training |")
    print("|---|---|---|---|---|")
    for name, model, rlog in models:
        row = {"model": args.model, "variant": name, "heads": args.heads, "ffn": args.ffn,
               "spearman": quality(model, 0), "sentences_per_s": best[name][0],
               "throughput_ratio": best[name][0] / ref[0], "latency_ratio": ref[1] / best[name][1],
               "steps": args.steps, "lr": args.lr, "batch": args.batch, "threads": args.threads,
               "bench_threads": args.bench_threads, "environment": environment()}
        train = "-"
        if rlog is not None:
            row.update({"tokens": rlog.tokens, "train_wall_s": rlog.train_wall_s, "best_step": rlog.best_step,
                        "dev_before": rlog.before, "dev_after": rlog.after})
            train = f"{rlog.tokens:,} tokens, {rlog.train_wall_s:.0f} s (best step {rlog.best_step})"
        append_row(args.out, row)
        print(f"| {name} | {row['spearman']:.2f} | {row['throughput_ratio']:.2f}x | {row['latency_ratio']:.2f}x | "
              f"{train} |", flush=True)


if __name__ == "__main__":
    main()
