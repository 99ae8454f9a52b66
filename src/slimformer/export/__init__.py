"""export(model, format, out): the model in a format a serving stack runs, written atomically.

- "hf": a Hugging Face folder (model/save.py): plain transformers loads a dense one; pruned or
  quantized models keep slimformer's compressed layout, which `slimformer.load` restores.
- "compressed-tensors": quantized models in the format transformers and vLLM load
  (compressed_tensors.py), where it can describe every quantized layer.
- "onnx": a folder with model.onnx (encoders; onnx.py), its tokenizer and pooling config.
- "gguf": one .gguf file for llama.cpp (Llama-family decoders; gguf.py).
- "openvino": a folder with OpenVINO IR model.xml / model.bin (encoders; openvino.py), its
  tokenizer and pooling config.
A failure or an interrupt leaves nothing at `out`.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from ..atomic import atomic_dir, atomic_file
from ..errors import ConfigValueError
from ..model import Model
from ..results import ExportResult

FORMATS = ("hf", "compressed-tensors", "onnx", "gguf", "openvino")


def check(model: Model, fmt: str) -> None:
    """Raise the one-line error an export of `model` as `fmt` would meet, before any work."""
    if fmt == "onnx":
        from .onnx import check_exportable
        check_exportable(model)
    elif fmt == "gguf":
        from .gguf import check_exportable
        check_exportable(model)
    elif fmt == "openvino":
        from .openvino import check_exportable
        check_exportable(model)
    elif fmt == "compressed-tensors":
        from .compressed_tensors import check_exportable
        check_exportable(model)


def export(model: Model, fmt: str, out: str | os.PathLike, dtype: str | None = None,
           overwrite: bool = False) -> ExportResult:
    """Write `model` as `fmt` to `out`. `dtype`: GGUF type of the weights slimformer did not
    quantize itself (f32, f16 [default], q8_0, q4_0, q4_1); ONNX / OpenVINO: "fp32" only."""
    if fmt not in FORMATS:
        raise ConfigValueError(f"unknown export format {fmt!r}; formats: {', '.join(FORMATS)}")
    if model.runtime != "torch":
        raise ConfigValueError(f"{model.source} is already an exported {model.runtime} model; export the "
                               "PyTorch model it came from")
    out = Path(out)
    t0 = time.perf_counter()
    if fmt == "gguf":
        from .gguf import source_gguf_of, write_gguf
        if out.suffix.lower() != ".gguf":
            raise ConfigValueError(f"--out {out}: a GGUF export is one file; name it *.gguf")
        check(model, fmt)  # before anything is created
        with atomic_file(out, overwrite=overwrite) as tmp:
            details = write_gguf(model, tmp, dtype=dtype or "f16", source_gguf=source_gguf_of(model))
        size = out.stat().st_size
    else:
        check(model, fmt)
        if fmt in ("onnx", "openvino"):
            if dtype not in (None, "fp32"):
                raise ConfigValueError(f"{fmt} exports fp32 graphs (quantized layers keep their own int8 "
                                       "codes); drop --type")
        elif dtype is not None:
            raise ConfigValueError("--type applies to GGUF exports only")
        with atomic_dir(out, overwrite=overwrite) as tmp:
            if fmt == "onnx":
                from .onnx import write_onnx_folder
                details = write_onnx_folder(model, tmp)
            elif fmt == "openvino":
                from .openvino import write_openvino_folder
                details = write_openvino_folder(model, tmp)
            elif fmt == "compressed-tensors":
                from .compressed_tensors import write_compressed_tensors
                details = write_compressed_tensors(model, tmp)
            else:
                from ..model.save import write_folder
                write_folder(model, tmp)
                details = {}
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return ExportResult(format=fmt, model=model.name, path=str(out), bytes=size, details=details,
                        wall_s=time.perf_counter() - t0)


__all__ = ["FORMATS", "export"]
