"""Run an exported file in the runtime it was made for: .onnx in ONNX Runtime, .gguf in llama.cpp,
OpenVINO IR (.xml) in OpenVINO.

`open_model(source, runtime)` returns a Model whose `module` is a runtime adapter answering the
calls evaluate/ and bench/ make (`module(input_ids=...)`, `generate`), so a PyTorch model and its
export are scored and timed by the same code in the same run. `runtime="auto"` picks by what the
user named: a path to a .onnx file (or an export folder holding model.onnx) runs in ONNX Runtime,
a path to a .gguf file in llama.cpp, a model.xml (or a folder holding one) in OpenVINO; aliases,
HF folders and hub ids run in PyTorch (so does a .gguf with runtime="torch": transformers
dequantizes it).
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigValueError, ModelNotFoundError
from ..model import Model
from ..model.arch import ArchMap
from ..model.load import load
from ..model.sources import ALIASES

RUNTIMES = ("auto", "torch", "onnxruntime", "llama.cpp", "openvino")
ONNX_FILE = "model.onnx"
OPENVINO_FILE = "model.xml"


def runtime_of(source: str | os.PathLike, runtime: str = "auto") -> str:
    if runtime not in RUNTIMES:
        raise ConfigValueError(f"unknown runtime {runtime!r}; runtimes: {', '.join(RUNTIMES)}")
    if runtime != "auto":
        return runtime
    given = str(source)
    if given in ALIASES:
        return "torch"
    path = Path(given).expanduser()
    if path.suffix.lower() == ".onnx" or (path.is_dir() and (path / ONNX_FILE).is_file()):
        return "onnxruntime"
    if path.suffix.lower() == ".gguf" and path.is_file():
        return "llama.cpp"
    if path.suffix.lower() == ".xml" or (path.is_dir() and (path / OPENVINO_FILE).is_file()):
        return "openvino"
    return "torch"


def open_model(source: str | os.PathLike | Model, runtime: str = "auto") -> Model:
    if isinstance(source, Model):
        return source
    kind = runtime_of(source, runtime)
    if kind == "torch":
        return load(source)
    if kind == "onnxruntime":
        from .onnxrt import open_onnx
        return open_onnx(_onnx_path(Path(source).expanduser()), given=str(source))
    if kind == "openvino":
        from .openvino import open_openvino
        return open_openvino(_openvino_path(Path(source).expanduser()), given=str(source))
    return _open_gguf(Path(source).expanduser(), given=str(source))


def _onnx_path(path: Path) -> Path:
    path = path / ONNX_FILE if path.is_dir() else path
    if path.suffix.lower() != ".onnx" or not path.is_file():
        raise ModelNotFoundError(f"{path}: no such ONNX file; pass a .onnx file or a folder from "
                                 "`slimformer export --format onnx`")
    return path


def _openvino_path(path: Path) -> Path:
    path = path / OPENVINO_FILE if path.is_dir() else path
    if path.suffix.lower() != ".xml" or not path.is_file() or not path.with_suffix(".bin").is_file():
        raise ModelNotFoundError(f"{path}: no such OpenVINO IR (model.xml with its model.bin); pass a folder "
                                 "from `slimformer export --format openvino`")
    return path


def _open_gguf(path: Path, given: str) -> Model:
    from ..model.gguf_tokenizer import cached_tokenizer
    from .llamacpp import LlamaCppModule, gguf_metadata
    if not path.is_file():
        raise ModelNotFoundError(f"{path}: no such .gguf file")
    meta = gguf_metadata(path)
    from ..model.families import FAMILIES, family_of_gguf
    arch = meta.get("general.architecture")
    fam = family_of_gguf(arch) if arch else None
    if fam is None:
        known = sorted({a for f in FAMILIES for a in (*f.gguf_arch.values(), *f.gguf_sources)})
        raise ModelNotFoundError(f"{path}: llama.cpp runs it, but slimformer evaluates GGUF architectures "
                                 f"{', '.join(known)} only (this one is {arch!r}); pass --runtime torch")
    tokenizer = cached_tokenizer(path)  # the file's own vocabulary, built once
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    amap = ArchMap(family=fam.name, model_type=arch, kind="causal",
                   hidden_size=int(meta.get(f"{arch}.embedding_length", 0)),
                   max_positions=int(meta.get(f"{arch}.context_length", 2048)), blocks=(),
                   embeddings=())
    return Model(module=LlamaCppModule(path, meta), tokenizer=tokenizer, arch=amap, source=given, path=None,
                 source_bytes=path.stat().st_size, runtime="llama.cpp")
