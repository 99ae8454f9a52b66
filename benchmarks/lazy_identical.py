"""Lazy loading changes nothing: the shipped recipes that work block by block, run on the embedded
models loaded whole and loaded lazily, save the same tensors.

    python benchmarks/lazy_identical.py                  # SmolLM2 and MiniLM, every streaming recipe
    python benchmarks/lazy_identical.py --samples 8 --seq-len 256

Each recipe's stages run with its own settings on a smaller calibration set (--samples x
--seq-len; the same set for both loads), then both models are saved and every saved tensor
compared with torch.equal. Prints one line per (model, recipe) and ALL IDENTICAL or the tensors
that differ; rows in results/lazy_identical.jsonl.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

import slimformer
from slimformer.compress import run_stages
from slimformer.model.save import save
from slimformer.recipe import load_recipe
from slimformer.stages import STAGES

from common import append_row

RECIPES = Path(slimformer.__file__).parent / "recipes"


def streaming(recipe) -> bool:
    return all(STAGES[s.name].streams for s in recipe.stages)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["smollm2", "minilm"])
    p.add_argument("--recipes", nargs="*", help="recipe file stems (default: every streaming recipe)")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "lazy_identical.jsonl"))
    args = p.parse_args()
    ok = True
    for name in args.models:
        eager = slimformer.load(name)
        for path in sorted(RECIPES.glob("*.yaml")):
            recipe = load_recipe(path)
            if args.recipes and path.stem not in args.recipes:
                continue
            if not streaming(recipe) or (eager.is_causal is False and "decoder" in path.name):
                continue
            recipe.calibration = dataclasses.replace(recipe.calibration, samples=args.samples, seq_len=args.seq_len)
            t0 = time.perf_counter()
            try:
                a, _ = run_stages(eager, recipe, progress=False)
            except slimformer.SlimformerError as e:  # a recipe for the other kind of model
                print(f"{name} {path.stem}: skipped ({e})")
                continue
            b, logs = run_stages(slimformer.load(name, lazy=True), recipe, progress=False)
            with tempfile.TemporaryDirectory() as tmp:
                save(a, Path(tmp) / "eager")
                save(b, Path(tmp) / "lazy")
                sa = slimformer.load(Path(tmp) / "eager").module.state_dict()
                sb = slimformer.load(Path(tmp) / "lazy").module.state_dict()
            differ = sorted(k for k in sa if k not in sb or not torch.equal(sa[k], sb[k]))
            differ += sorted(set(sb) - set(sa))
            ok &= not differ
            memory = [getattr(g, "memory", None) for g in logs]
            print(f"{name} {path.stem}: {len(sa)} tensors, {'identical' if not differ else f'{len(differ)} DIFFER: {differ[:5]}'}"
                  f" ({memory}, {time.perf_counter() - t0:.0f} s)", flush=True)
            append_row(args.out, {"model": name, "recipe": path.name, "tensors": len(sa), "differ": differ,
                                  "memory": memory, "calibration": [args.samples, args.seq_len]})
    print("ALL IDENTICAL" if ok else "SOME DIFFER")


if __name__ == "__main__":
    main()
