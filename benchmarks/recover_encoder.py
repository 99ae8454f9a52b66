"""Trim an encoder, recover it by distillation, optionally quantize W8A8: quality, fidelity, speed.

    python benchmarks/recover_encoder.py                          # MiniLM, 50 % heads + FFN, 1000 steps
    python benchmarks/recover_encoder.py --w8a8 ptq qat --qat-steps 300   # also W8A8 after recovery / with QAT
    python benchmarks/recover_encoder.py --ffn 0.75 --steps 300 --no-speed \
        --loss cosine=1 cosine=1,hidden=1 cosine=1,layers=1 cosine=1,hidden=1,layers=1   # losses compared
    python benchmarks/recover_encoder.py --ffn 0.75 --data wikitext2:validation   # held-out domains unseen

Recovery (RecoverConfig defaults unless given): training text --data (default: STS-B train,
SST-2 train, WikiText-2 validation, equal shares), the checkpoint chosen by --eval (default:
fidelity to the original on the held-out slice of every training source), losses --loss (one
recovered variant per spec: comma-separated RecoverConfig loss weights; unnamed weights 0).
Fidelity: mean and 1st-percentile cosine to the original's embeddings on STS-B test, WikiText-2
test and SST-2 dev texts (500 each; with --data wikitext2:validation two of them are domains
never trained on). --track stsb:test records the test Spearman at every evaluation (the curve
of drop against steps; never used to select).

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

from slimformer.evaluate.fidelity import encoder_fidelity

from common import append_row, quality

LOSSES = ("kl", "ce", "cosine", "mse", "hidden", "relation", "layers")


def loss_weights(spec: str) -> dict:
    """'cosine=1,layers=1' -> every RecoverConfig loss weight (unnamed: 0)."""
    out = dict.fromkeys(LOSSES, 0.0)
    for part in spec.split(","):
        name, _, value = part.partition("=")
        if name not in LOSSES:
            raise SystemExit(f"--loss {spec!r}: {name!r} is not one of {', '.join(LOSSES)}")
        out[name] = float(value or 1)
    return out

W8A8 = QuantizeConfig(method="gptq", bits=8, activations="dynamic", smoothquant=0.5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--heads", type=float, default=0.5)
    p.add_argument("--ffn", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, nargs="+", default=[2e-4], help="one recovered variant per value")
    p.add_argument("--train", nargs="+", default=["blocks"], choices=["blocks", "all"],
                   help="what is trained (RecoverConfig.train); one recovered variant per value")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--w8a8", nargs="*", default=[], choices=["ptq", "qat"])
    p.add_argument("--qat-steps", type=int, default=None, help="QAT steps (default: --steps)")
    p.add_argument("--threads", type=int, default=2, help="torch threads while training")
    p.add_argument("--bench-threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--loss", nargs="+", default=[None], help="loss specs (default: RecoverConfig's)")
    p.add_argument("--data", nargs="+", default=None, help="training sources (default: RecoverConfig's)")
    p.add_argument("--eval", default=None, help="checkpoint selection (default: fidelity)")
    p.add_argument("--track", nargs="*", default=[], help="pair sets scored at every evaluation (curves)")
    p.add_argument("--no-speed", action="store_true", help="skip the throughput / latency rounds")
    p.add_argument("--out", default="runs/recover_encoder.jsonl")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base = slimformer.load(args.model)
    rc = RecoverConfig(steps=args.steps, lr=args.lr[0], batch_size=args.batch, eval_every=args.eval_every,
                       eval=args.eval, track=args.track, **({"data": args.data} if args.data else {}))
    trim_cfg = TrimConfig(score="fluctuation", heads=args.heads, ffn=args.ffn, compensate="reconstruct")
    models = [("original fp32", base, None)]
    trimmed = copy.deepcopy(base)
    trim_model(trimmed, trim_cfg, None, original=base, progress=False)
    models.append(("trim one-shot", trimmed, None))
    for spec in args.loss:
        for lr in args.lr:
            for train in args.train:
                recovered = copy.deepcopy(trimmed)
                cfg = dataclasses.replace(rc, lr=lr, train=train, **(loss_weights(spec) if spec else {}))
                log = recover(recovered, base, cfg, progress=True)
                tags = [f"[{spec}]"] if spec else []
                tags += [f"lr {lr:g}"] if len(args.lr) > 1 else []
                tags += [f"train {train}"] if len(args.train) > 1 else []
                models.append((" ".join(["trim + recover", *tags]), recovered, log))
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
    for _ in range(0 if args.no_speed else args.rounds):  # alternating: a fixed order would favour the last
        for name, model, _ in models:
            thr = encoder_throughput(model, "stsb", 32, None, 2)["items_per_s"]
            lat = latency_grid(model, [1], [32], warmup=3, repeats=20)[0].median_ms
            old = best.get(name, (0.0, float("inf")))
            best[name] = (max(old[0], thr), min(old[1], lat))
    ref = best.get("original fp32", (float("nan"), float("nan")))
    print(f"\n{args.model}, heads {args.heads:g} + FFN {args.ffn:g} trimmed, {args.steps} steps x {args.batch} "
          f"sentences, lr {' / '.join(f'{v:g}' for v in args.lr)}; speed at {args.bench_threads} thread(s)")
    print("| variant | STS-B test Spearman | fidelity mean (p01): STS-B test / WikiText-2 test / SST-2 dev | "
          "throughput vs fp32 | b1x32 latency vs fp32 | training |")
    print("|---|---|---|---|---|---|")
    torch.set_num_threads(args.threads)
    for name, model, rlog in models:
        fid = encoder_fidelity(model, base)
        speed = best.get(name, (float("nan"), float("nan")))
        row = {"model": args.model, "variant": name, "heads": args.heads, "ffn": args.ffn,
               "spearman": quality(model, 0), "fidelity": fid.value, "fidelity_sets": fid.extra["sets"],
               "interchangeable": fid.extra["interchangeable"], "sentences_per_s": speed[0],
               "throughput_ratio": speed[0] / ref[0], "latency_ratio": ref[1] / speed[1],
               "steps": args.steps, "lr": rlog.config["lr"] if rlog else None,
               "train": rlog.config["train"] if rlog else None, "batch": args.batch, "threads": args.threads,
               "bench_threads": args.bench_threads, "environment": environment()}
        train = "-"
        if rlog is not None:
            row.update({"tokens": rlog.tokens, "train_wall_s": rlog.train_wall_s, "best_step": rlog.best_step,
                        "selection": rlog.metric, "selection_before": rlog.before, "selection_after": rlog.after,
                        "losses": {k: rlog.config[k] for k in LOSSES}, "data": rlog.data.get("mixture"),
                        "curve": [h for h in rlog.history if "eval" in h]})
            train = f"{rlog.tokens:,} tokens, {rlog.train_wall_s:.0f} s (best step {rlog.best_step})"
        append_row(args.out, row)
        sets = " / ".join(f"{v['mean']:.3f} ({v['p01']:.3f})" for v in fid.extra["sets"].values())
        print(f"| {name} | {row['spearman']:.2f} | {sets} | {row['throughput_ratio']:.2f}x | "
              f"{row['latency_ratio']:.2f}x | {train} |", flush=True)


if __name__ == "__main__":
    main()
