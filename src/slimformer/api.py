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
from .results import BenchResult, Comparison, EvalResult, ExportResult

BenchConfig = _bench.BenchConfig


def load(source: str | os.PathLike | Model, dtype: torch.dtype = torch.float32, lazy: bool | str = False) -> Model:
    """An alias (minilm, smollm2), an HF folder, a .gguf file or a hub id, loaded with its ArchMap.
    lazy=True keeps the blocks on disk until used (a model larger than memory); "auto" decides
    from the model's size and the memory available."""
    return source if isinstance(source, Model) else _load(source, dtype=dtype, lazy=lazy)


def info(model: str | Model) -> ModelInfo:
    return model_info(load(model))


def evaluate(model: str | Model, task: str | None = None, data: str | None = None, split: str = "test",
             reference: str | Model | None = None, seq_len: int = 1024, max_windows: int | None = None,
             batch_size: int | None = None, progress: bool = True, runtime: str = "auto",
             limit: int | None = None) -> EvalResult:
    """Quality on real data: task "sts", "ppl" or "fidelity" (which needs a reference model), or
    "lm-eval:TASK[,TASK...]" (lm-evaluation-harness; `limit` items per task).
    A .onnx / .gguf path runs in ONNX Runtime / llama.cpp (runtime="auto"; see runtime/)."""
    from .runtime import open_model
    ref = open_model(reference, runtime) if reference is not None else None
    return _evaluate.evaluate(open_model(model, runtime), task, data=data, split=split, reference=ref,
                              seq_len=seq_len, max_windows=max_windows, batch_size=batch_size, progress=progress,
                              limit=limit)


def bench(model: str | Model, config: BenchConfig | None = None,
          vs: str | Model | None = None, runtime: str = "auto") -> BenchResult | Comparison:
    """Speed, memory and size; with `vs`, both models back to back and the ratios vs / model."""
    from .runtime import open_model
    if vs is not None:
        return _bench.compare(open_model(model, runtime), open_model(vs, runtime), config)
    return _bench.bench(open_model(model, runtime), config)


def export(model: str | Model, format: str, out: str | os.PathLike, dtype: str | None = None,
           overwrite: bool = False) -> ExportResult:
    """`model` as "hf", "onnx" (encoders) or "gguf" (Llama-family decoders) at `out`; a compress
    output folder stands for its model/."""
    from .export import export as _export
    if not isinstance(model, Model):
        model = load(_model_of_output(model))
    return _export(model, format, out, dtype=dtype, overwrite=overwrite)


def _model_of_output(source: str | os.PathLike) -> str | os.PathLike:
    from pathlib import Path
    p = Path(source)
    if p.is_dir() and not (p / "config.json").is_file() and (p / "model" / "config.json").is_file():
        return p / "model"
    return source


def compress(model: str | Model, recipe: str | os.PathLike | dict | Recipe | None = None,
             out: str | os.PathLike | None = None, overwrite: bool = False,
             progress: bool = True, resume: bool = False, lazy: bool | str = "auto") -> _compress.CompressResult:
    """Run a recipe's stages, evaluate and bench against the original, write `out` if given.
    `resume` continues an interrupted recover stage from its checkpoints in `<out>.recover`.
    `lazy` (see load): blocks read from disk as the stages reach them, for a model larger than memory."""
    if isinstance(recipe, dict):
        recipe = parse_recipe(recipe)
    elif not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    return _compress.compress(load(model, lazy=lazy), recipe, out=out, overwrite=overwrite, progress=progress,
                              resume=resume)


def tune(model: str | Model, config=None, out: str | os.PathLike = "runs/tune", progress: bool = True):
    """The fastest model within a quality budget (slimformer.tune.TuneConfig), measured in the
    runtime it will be served from; resumes the tune in `out` if one was interrupted there."""
    from .tune import TuneConfig
    from .tune import tune as _tune
    return _tune(load(model), config or TuneConfig(), out, progress=progress)
