"""The recipe runner: stages in order, then quality and speed against the original, then one
output folder (model/, results.json, report.md, plot) written completely or not at all."""
from __future__ import annotations

import copy
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path


from .atomic import atomic_dir
from .bench import compare
from .bench.memory import RssPeak
from .errors import ConfigValueError
from .evaluate import default_task, evaluate
from .evaluate.fidelity import encoder_fidelity
from .model import Model
from .model.save import write_folder
from .recipe import Recipe
from .results import Comparison, EvalResult, _Serialisable
from .stages import STAGES, StageContext, StageLog, as_stage_log


@dataclass
class CompressResult(_Serialisable):
    model: str
    recipe: dict
    stages: list[StageLog]  # results.json holds each one's to_dict()
    quality: dict  # {"original": EvalResult, "compressed": EvalResult}
    fidelity: dict | None  # EvalResult of compressed vs original
    speed: dict  # Comparison as a dict
    notes: list[str] = field(default_factory=list)
    out: str | None = None
    export: dict | None = None  # the recipe's onnx / gguf export: where, size, quality in its runtime
    wall_s: float = 0.0
    source: dict | None = None  # {"given", "bytes" (the .gguf / weight files), "output_bytes", "output_ratio"}
    # peak RSS of the process (bytes) in each step after the stages (the stages' own are in their
    # logs): which step of a run held the most, e.g. for a lazily loaded model larger than memory
    memory: dict = field(default_factory=dict)
    # how model/ was written: {"format": "hf" | "compressed-tensors" | "slimformer", "why": ...}
    layout: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["stages"] = [s.to_dict() for s in self.stages]
        return out


def run_stages(model: Model, recipe: Recipe, progress: bool = True, work_dir: Path | None = None,
               resume: bool = False) -> tuple[Model, list[StageLog]]:
    """Apply the recipe's stages to a copy of `model`; the original stays untouched. The model's
    log (saved as slimformer.json "stages") gets each StageLog's to_dict(); the StageLogs are returned."""
    current = copy_model(model)
    ctx = StageContext(original=model, calibration=recipe.calibration, progress=progress,
                       work_dir=work_dir, resume=resume)
    logs = []
    for entry in recipe.stages:
        t0 = time.perf_counter()
        lazy = current.lazy is not None
        whole = lazy and not STAGES[entry.name].streams
        with RssPeak() as mem:
            if whole:  # this stage needs every block at once: the lazy model ends here
                load_whole(current)
            current, log = STAGES[entry.name].run(current, entry.config, ctx)
        log = as_stage_log(entry.name, log)
        log.wall_s, log.peak_rss_bytes = time.perf_counter() - t0, mem.peak
        if lazy:
            log.memory = "whole model (this stage does not work block by block)" if whole else "one block at a time"
        current.log.append(log.to_dict())
        current.path = None
        logs.append(log)
    return current, logs


def copy_model(model: Model) -> Model:
    """A deep copy to compress; a lazily loaded one shares the resident tensors outside its blocks
    (embeddings, head) with the original until a stage that needs the whole model runs."""
    if model.lazy is None:
        return copy.deepcopy(model)
    from .model.lazy import shared_rest_memo
    return copy.deepcopy(model, shared_rest_memo(model.module, model.lazy))


def load_whole(model: Model) -> None:
    """Every block of a lazily loaded copy into memory, its own tensors, and no longer lazy."""
    from .model.lazy import unshare_rest
    unshare_rest(model.module, model.lazy)
    model.lazy.load_all(model.module)
    model.lazy.detach(model.module)
    model.lazy = None


def compress(model: Model, recipe: Recipe, out: str | os.PathLike | None = None,
             overwrite: bool = False, progress: bool = True, resume: bool = False) -> CompressResult:
    """Under `accelerate launch` every process runs the stages (recover trains data-parallel);
    only the main process evaluates, benchmarks and writes `out`."""
    t0 = time.perf_counter()
    if out is not None and Path(out).exists() and not overwrite:
        raise ConfigValueError(f"{out} already exists; choose another --out or remove it first")
    from .export import check as check_export
    check_export(model, recipe.export.format)  # an export the model cannot take fails before any work
    work_dir = Path(f"{out}.recover") if out is not None else None  # checkpoints, kept if a run stops
    if work_dir is not None and work_dir.exists() and overwrite and not resume and is_main_process():
        shutil.rmtree(work_dir)  # --overwrite starts afresh; --resume would continue from them
    compressed, logs = run_stages(model, recipe, progress, work_dir, resume)
    return finish(model, compressed, logs, recipe, out=out, overwrite=overwrite, progress=progress, t0=t0)


def finish(model: Model, compressed: Model, logs: list[StageLog], recipe: Recipe,
           out: str | os.PathLike | None = None, overwrite: bool = False, progress: bool = True,
           t0: float | None = None) -> CompressResult:
    """Evaluate (the recipe's split), bench and write what `run_stages` made: compress's second
    half, also the last step of a tune (its chosen model, scored on the test split only here)."""
    t0 = time.perf_counter() if t0 is None else t0
    notes = []
    if not logs:
        notes.append("The recipe has no compression stages: the model was evaluated and benchmarked "
                     "as it is; speed ratios near 1.0 show the measurement noise.")
    simulated = sum(log.kernels.get("simulated", 0) for log in logs if log.stage == "quantize")  # QuantizeLog
    if simulated:
        notes.append(f"SIMULATED: {simulated} quantized linears have no integer kernel here and run "
                     "dequantized in fp32 (research only); the speed figures are not a quantization speed-up.")
    odd = [log for log in logs if log.stage == "trim" and not log.standard]  # TrimLog
    if odd:
        notes.append("NON-STANDARD shapes: the trimmed model's config cannot describe it "
                     f"({odd[-1].nonstandard[0]}, ...); it is saved with a shape map and loads through "
                     "slimformer.load, not plain transformers.")
    on_task = [log for log in logs if log.stage == "recover" and log.metric.startswith("Spearman")]  # RecoverLog
    if on_task:
        notes.append(f"Recovery chose its checkpoint on a task score ({on_task[-1].metric}), not on fidelity to the "
                     "original: quality on that task's data is optimistic, and on other data it may drop more.")
    if model.lazy is not None:
        notes.append("LAZY: the model was loaded lazily (its blocks read from disk as used: a model larger than "
                     "memory), so speed was not timed; sizes are from the tensors' shapes and types.")
    if not is_main_process():
        return CompressResult(model=model.name, recipe=recipe.to_dict(), stages=logs, quality={}, fidelity=None,
                              speed={}, notes=["not the main process: evaluation and output skipped"])
    ev = recipe.evaluate
    task = ev.task or default_task(model)
    kw = dict(task=task, data=ev.data, split=ev.split, seq_len=ev.seq_len, max_windows=ev.max_windows,
              progress=progress, limit=ev.limit)
    memory = {}
    with RssPeak() as mem:
        quality = {"original": evaluate(model, **kw)}
    memory["evaluate original"] = mem.peak
    with RssPeak() as mem:
        quality["compressed"] = evaluate(compressed, **kw)
    memory["evaluate compressed"] = mem.peak
    fid = None
    with RssPeak() as mem:
        if ev.fidelity and not model.is_causal:  # several domains: the user's own data is none of them
            fid = encoder_fidelity(compressed, model)
            if not fid.extra["interchangeable"]:
                notes.append(not_interchangeable_note(fid))
        elif ev.fidelity:
            fid = evaluate(compressed, "fidelity", split=ev.split, reference=model, seq_len=ev.seq_len,
                           max_windows=ev.max_windows and min(ev.max_windows, 8), progress=progress)
    if fid is not None:
        memory["fidelity"] = mem.peak
    speed: Comparison = compare(model, compressed, recipe.bench)  # no second sampler beside its timers
    bench_peak = max(speed.base.peak_rss_bytes, speed.other.peak_rss_bytes)
    if bench_peak:  # a lazy model is not timed: no bench step
        memory["bench"] = bench_peak
    source = source_size(model, speed)
    if source and source["output_ratio"] > 1.0:
        notes.append(larger_than_source_note(source, speed))
    result = CompressResult(
        model=model.name, recipe=recipe.to_dict(), stages=logs,
        quality={k: v.to_dict() for k, v in quality.items()},
        fidelity=fid.to_dict() if fid else None, speed=speed.to_dict(), notes=notes,
        out=str(out) if out else None, source=source, memory=memory)
    result.wall_s = time.perf_counter() - t0
    if out is not None:
        write_output(compressed, result, Path(out), overwrite, recipe, kw)
    return result


def not_interchangeable_note(fid) -> str:
    worst = min(fid.extra["sets"].items(), key=lambda kv: kv[1]["p01"])
    return (f"The compressed model's embeddings are NOT interchangeable with the original's (mean cosine "
            f"{fid.value:.3f}; 1st percentile {worst[1]['p01']:.3f} on {worst[0]}): re-embed any index or cache "
            "built with the original before serving queries with this model.")


def source_size(model: Model, speed: Comparison) -> dict | None:
    """The size of what the user gave (a .gguf file, or a folder's weight files) against the
    compressed weights; None when it is not known. The summary's size ratio is against the model as
    slimformer saves it (fp32), which for a quantized source is far larger than the file given."""
    if not model.source_bytes:
        return None
    out_bytes = speed.other.size_bytes
    return {"given": str(model.source), "bytes": int(model.source_bytes), "output_bytes": int(out_bytes),
            "output_ratio": out_bytes / model.source_bytes}


def larger_than_source_note(source: dict, speed: Comparison) -> str:
    mib = lambda n: f"{n / 2**20:,.1f} MiB"
    return (f"LARGER THAN WHAT YOU GAVE: the compressed weights ({mib(source['output_bytes'])}) are "
            f"{source['output_ratio']:.2f}x the size of {source['given']} ({mib(source['bytes'])}). "
            f"The size ratio in the summary is against the model as slimformer loaded it, in fp32 "
            f"({mib(speed.base.size_bytes)}; a quantized source is dequantized on loading), and what "
            "the recipe leaves unquantized (the embeddings, for one) is written in fp32.")


EXPORT_NAMES = {"onnx": "onnx", "gguf": "model.gguf", "openvino": "openvino", "compressed-tensors": "compressed-tensors"}


def export_and_check(model: Model, recipe: Recipe, folder: Path, eval_kw: dict) -> dict:
    """Write the recipe's export beside model/ and score it in its own runtime, same protocol."""
    from .export import export
    from .runtime import open_model
    fmt = recipe.export.format
    res = export(model, fmt, folder / EXPORT_NAMES[fmt], dtype=recipe.export.type)
    exported = open_model(folder / EXPORT_NAMES[fmt])
    if exported.runtime == "llama.cpp":  # the file's vocabulary is the model's: score the same token ids
        exported.tokenizer = model.tokenizer
    quality = evaluate(exported, **eval_kw)
    quality.model = f"{model.name} as {fmt} in {exported.runtime}"
    return {**res.to_dict(), "path": EXPORT_NAMES[fmt], "quality": quality.to_dict()}


def write_model(model: Model, folder: Path) -> dict:
    """model/ in the most widely loadable layout that holds the model exactly: a dense model as a
    standard HF folder; quantized layers compressed-tensors can describe in that format (transformers
    and vLLM load it; slimformer.load reads it back onto the same codes and kernels); anything else
    (masks, low-rank factors, trimmed shapes the config cannot state, grids the format has no word
    for, a lazily loaded model) in slimformer's own layout, the reason stated."""
    from .export.compressed_tensors import obstacle, write_compressed_tensors
    from .model.save import base_meta, own_layout_reason, write_meta
    own = own_layout_reason(model)
    why = obstacle(model) if own else None
    if own and why is None:
        details = write_compressed_tensors(model, folder)
        write_meta(folder, {**base_meta(model), "layout": "compressed-tensors"})
        return {"format": "compressed-tensors", "formats": details["formats"],
                "loads_in": "transformers (with compressed-tensors), vLLM, slimformer.load"}
    write_folder(model, folder)
    if own is None:
        return {"format": "hf", "loads_in": "transformers, slimformer.load"}
    return {"format": "slimformer", "why": own if why == "no quantized layer" else why, "loads_in": "slimformer.load"}


def is_main_process() -> bool:
    """False in the non-zero ranks of a multi-process launch (torchrun / accelerate launch)."""
    return int(os.environ.get("RANK", "0")) == 0


def write_output(model: Model, result: CompressResult, out: Path, overwrite: bool,
                 recipe: Recipe | None = None, eval_kw: dict | None = None) -> None:
    from .report import write_report
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "model").mkdir()
        with RssPeak() as mem:
            result.layout = write_model(model, tmp / "model")
        result.memory["write model"] = mem.peak
        result.layout["bytes"] = sum(p.stat().st_size for p in (tmp / "model").glob("*.safetensors"))
        if recipe is not None and recipe.export.format != "hf":
            with RssPeak() as mem:
                result.export = export_and_check(model, recipe, tmp, eval_kw or {})
            result.memory["export and check"] = mem.peak
        result.to_json(tmp / "results.json")
        write_report(result, tmp)


__all__ = ["CompressResult", "compress", "finish", "run_stages", "EvalResult"]
