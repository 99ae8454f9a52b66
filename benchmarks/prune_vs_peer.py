"""Prune stage vs llm-compressor (optional peer), same model, same calibration windows, same
evaluation, one process. Prints a Markdown table; appends one JSON line per run to --out.

    python benchmarks/prune_vs_peer.py                       # SmolLM2: every method, 50 % and 2:4
    python benchmarks/prune_vs_peer.py --runs wanda:0.5 sparsegpt:2:4 --peer
    python benchmarks/prune_vs_peer.py --runs wanda:0.7 wanda:0.7:owl   # OWL beside uniform
    python benchmarks/prune_vs_peer.py --model minilm --runs wanda:0.5 sparsegpt:0.5

A run is METHOD:SPARSITY, METHOD:N:M, or METHOD:SPARSITY:owl. The peer (pip install -e .[bench])
runs llm-compressor's oneshot with its modifier for the same method, fed the very token windows
slimformer calibrates on; its pruned model is scored by the same slimformer evaluation.
"""
from __future__ import annotations

import argparse
import copy
import platform
import time
from pathlib import Path

import torch

import slimformer
from slimformer.bench.env import environment
from slimformer.bench.memory import RssPeak
from slimformer.data.calibration import calibration_set
from slimformer.prune import PruneConfig, prune_model

from common import add_peer_arguments, append_row, metric_name, peer_dataset, quality

DEFAULT_RUNS = ["magnitude:0.5", "magnitude:2:4", "wanda:0.5", "wanda:2:4", "sparsegpt:0.5", "sparsegpt:2:4"]


def parse_run(text: str) -> PruneConfig:
    parts = text.split(":")
    method = parts[0]
    if len(parts) == 3 and parts[2] != "owl":
        return PruneConfig(method=method, pattern=f"{parts[1]}:{parts[2]}")
    cfg = PruneConfig(method=method, sparsity=float(parts[1]))
    if len(parts) == 3:
        cfg.allocation = "owl"
    return cfg


def label(cfg: PruneConfig) -> str:
    what = cfg.pattern if cfg.pattern != "unstructured" else f"{cfg.sparsity:.0%}"
    return f"{cfg.method} {what}" + (" OWL" if cfg.allocation == "owl" else "")


def run_slimformer(base, cfg: PruneConfig, cal: dict, model=None) -> tuple:
    """Prunes a copy of `base` (or `model`, a copy the caller already made)."""
    model = model or copy.deepcopy(base)
    t0 = time.perf_counter()
    with RssPeak() as mem:
        log = prune_model(model, cfg, cal, progress=False)
    return model, time.perf_counter() - t0, mem.increase, log.sparsity_of_block_linears


def run_peer(base, cfg: PruneConfig, calib, model=None) -> tuple:
    """llm-compressor oneshot with the same method on the same windows (on a copy of `base`, or
    on `model`); None if not applicable."""
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    structure = cfg.pattern if cfg.pattern != "unstructured" else "0:0"
    sparsity = 1 - int(structure.split(":")[0]) / int(structure.split(":")[1]) if structure != "0:0" else cfg.sparsity
    common = dict(sparsity=sparsity, mask_structure=structure, ignore=["re:.*lm_head"], targets=["Linear"])
    if cfg.allocation == "owl":
        common.update(sparsity_profile="owl", owl_m=int(cfg.owl_threshold), owl_lmbda=cfg.owl_lambda)
    if cfg.method == "wanda":
        modifier = WandaPruningModifier(**common)
    elif cfg.method == "sparsegpt":
        modifier = SparseGPTModifier(**common, dampening_frac=cfg.damp, block_size=cfg.blocksize)
    else:
        return None
    ds = peer_dataset(calib)
    model = model or copy.deepcopy(base)
    t0 = time.perf_counter()
    with RssPeak() as mem:
        oneshot(model=model.module, dataset=ds, recipe=[modifier], num_calibration_samples=len(ds),
                max_seq_length=calib.seq_len, shuffle_calibration_samples=False)
    wall = time.perf_counter() - t0
    zeros = sum(int((model.module.get_submodule(n).weight == 0).sum()) for n in model.arch.linears)
    total = sum(model.module.get_submodule(n).weight.numel() for n in model.arch.linears)
    return model, wall, mem.increase, zeros / total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_peer_arguments(p, "runs/prune_vs_peer.jsonl")
    p.add_argument("--runs", nargs="+", default=DEFAULT_RUNS)
    p.add_argument("--peer-runs", nargs="+", default=DEFAULT_RUNS[2:],
                   help="the runs the peer repeats (default: wanda and sparsegpt at 50%% and 2:4)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = slimformer.load(args.model)
    cal = {"samples": args.samples, "seq_len": args.seq_len, "seed": args.seed}
    calib = calibration_set(base, **cal)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    rows = []
    dense = quality(base, args.windows, args.seq_len)
    metric = metric_name(base)
    print(f"dense {metric}: {dense:.3f}", flush=True)
    for text in args.runs:
        cfg = parse_run(text)
        with_peer = args.peer and text in args.peer_runs
        for tool in (["slimformer", "llm-compressor"] if with_peer else ["slimformer"]):
            if tool == "slimformer":
                res = run_slimformer(base, cfg, cal)
            else:
                try:
                    res = run_peer(base, cfg, calib)
                except Exception as e:  # a peer failure is reported, not fatal
                    print(f"{label(cfg)} llm-compressor failed: {type(e).__name__}: {e}".splitlines()[0], flush=True)
                    res = None
            if res is None:
                continue
            model, wall, mem_inc, sparsity = res
            q = quality(model, args.windows, args.seq_len)
            row = {"model": args.model, "run": label(cfg), "tool": tool, "quality": q, "metric": metric,
                   "dense": dense, "wall_s": wall, "peak_rss_increase_mib": mem_inc / 2**20,
                   "sparsity": sparsity, "calibration": calib.describe(), "windows": args.windows,
                   "threads": torch.get_num_threads(), "environment": environment()}
            rows.append(row)
            append_row(args.out, row)
            print(f"{row['run']:<22} {tool:<15} {metric} {q:9.3f}  {wall:7.1f} s  "
                  f"+{row['peak_rss_increase_mib']:.0f} MiB  sparsity {sparsity:.3f}", flush=True)
            del model
    print(f"\n| run | tool | {metric} | wall s | peak RSS increase | sparsity |\n|---|---|---|---|---|---|")
    print(f"| dense | - | {dense:.2f} | - | - | 0 |")
    for r in rows:
        print(f"| {r['run']} | {r['tool']} | {r['quality']:.2f} | {r['wall_s']:.0f} | "
              f"{r['peak_rss_increase_mib']:.0f} MiB | {r['sparsity']:.3f} |")
    print(f"\n{environment()['cpu']}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"python {platform.python_version()}; calibration {calib.describe()}")


if __name__ == "__main__":
    main()
