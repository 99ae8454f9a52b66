"""The Python API; the CLI is a thin layer over these functions and prints what they return."""
from __future__ import annotations

import os

import torch

from . import bench as _bench
from . import compress as _compress
from . import evaluate as _evaluate
from .model import Model
from .model import load as _load
from .model.info import ModelInfo, model_info
from .recipe import Recipe, load_recipe, parse_recipe
from .results import BenchResult, Comparison, EvalResult

BenchConfig = _bench.BenchConfig


def load(source: str | os.PathLike | Model, dtype: torch.dtype = torch.float32) -> Model:
    """An alias (minilm, smollm2), an HF folder, a .gguf file or a hub id, loaded with its ArchMap."""
    return source if isinstance(source, Model) else _load(source, dtype=dtype)


def info(model: str | Model) -> ModelInfo:
    return model_info(load(model))


def evaluate(model: str | Model, task: str | None = None, data: str | None = None, split: str = "test",
             reference: str | Model | None = None, seq_len: int = 1024, max_windows: int | None = None,
             batch_size: int | None = None, progress: bool = True) -> EvalResult:
    """Quality on real data: task "sts", "ppl" or "fidelity" (which needs a reference model)."""
    ref = load(reference) if reference is not None else None
    return _evaluate.evaluate(load(model), task, data=data, split=split, reference=ref, seq_len=seq_len,
                              max_windows=max_windows, batch_size=batch_size, progress=progress)


def bench(model: str | Model, config: BenchConfig | None = None,
          vs: str | Model | None = None) -> BenchResult | Comparison:
    """Speed, memory and size; with `vs`, both models back to back and the ratios vs / model."""
    if vs is not None:
        return _bench.compare(load(model), load(vs), config)
    return _bench.bench(load(model), config)


def compress(model: str | Model, recipe: str | os.PathLike | dict | Recipe | None = None,
             out: str | os.PathLike | None = None, overwrite: bool = False,
             progress: bool = True, resume: bool = False) -> _compress.CompressResult:
    """Run a recipe's stages, evaluate and bench against the original, write `out` if given.
    `resume` continues an interrupted recover stage from its checkpoints in `<out>.recover`."""
    if isinstance(recipe, dict):
        recipe = parse_recipe(recipe)
    elif not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    return _compress.compress(load(model), recipe, out=out, overwrite=overwrite, progress=progress,
                              resume=resume)
