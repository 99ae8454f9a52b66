"""Where the prune stage's wall time goes: the block forwards (calibration pass and propagation),
the X^T X accumulation, the Hessian inversion and the SparseGPT solve, timed by wrapping those
functions for one run of `prune_model`. Wanda has no inversion or solve; magnitude no forwards.

    python benchmarks/prune_phases.py --runs sparsegpt:0.5 --threads 2

The wrappers add a few microseconds per call (tens of thousands of calls: well under 1 %).
"""
from __future__ import annotations

import argparse
import collections
import time

import torch

import slimformer
from slimformer.bench.env import environment
from slimformer.engine import sequential, stats
from slimformer.prune import prune_model, stage

from common import add_calibration_arguments, append_row
from prune_vs_peer import label, parse_run

SECONDS: dict[str, float] = collections.defaultdict(float)
FORWARDS = "block forwards (incl. X^T X / norms hooks)"
GRAM = "X^T X (inside the forwards)"


def timed(key: str, fn):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SECONDS[key] += time.perf_counter() - t0
    return wrapper


def install() -> None:
    """Wrap the phases where the stage looks them up (module attributes, read at call time)."""
    sequential._run_block = timed(FORWARDS, sequential._run_block)
    sequential.capture_block_inputs = timed("capture block-0 inputs", sequential.capture_block_inputs)
    sequential.release_free_heap = timed("heap release (engine)", sequential.release_free_heap)
    stats.gram = timed(GRAM, stats.gram)
    stage.inverse_cholesky = timed("Hessian inversion", stage.inverse_cholesky)
    stage.sparsegpt_solve = timed("SparseGPT solve", stage.sparsegpt_solve)
    stage.wanda_mask = timed("Wanda mask", stage.wanda_mask)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=["sparsegpt:0.5"])
    add_calibration_arguments(p)
    p.add_argument("--out", default="runs/prune_phases.jsonl")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    install()
    cal = {"samples": args.samples or 64, "seq_len": args.seq_len, "seed": args.seed}
    for text in args.runs:
        cfg = parse_run(text)
        model = slimformer.load(args.model)  # each run prunes a fresh load
        SECONDS.clear()
        t0 = time.perf_counter()
        prune_model(model, cfg, cal, progress=False)
        total = time.perf_counter() - t0
        print(f"\n{label(cfg)}: {total:.1f} s in prune_model ({environment()['cpu']}, "
              f"{torch.get_num_threads()} threads, torch {torch.__version__})")
        print("| phase | seconds | share |\n| --- | --- | --- |")
        for key, sec in sorted(SECONDS.items(), key=lambda kv: -kv[1]):
            print(f"| {key} | {sec:.1f} | {sec / total:.0%} |")
        forwards = SECONDS[FORWARDS] - SECONDS[GRAM]
        print(f"| block forwards without X^T X | {forwards:.1f} | {forwards / total:.0%} |")
        append_row(args.out, {"run": text, "model": args.model, "calibration": cal, "total_s": total,
                              "phases_s": dict(SECONDS), "threads": torch.get_num_threads(),
                              "environment": environment()})


if __name__ == "__main__":
    main()
