"""An exported encoder run by ONNX Runtime, behind the calls evaluate/ and bench/ make.

The session uses torch's current thread count (bench sets it), all graph optimisations, and the
CPU provider; it is rebuilt when the thread count changes so that a benchmark at 1 and 2 threads
measures what it says.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ..errors import MissingDependencyError, ModelNotFoundError, UnsupportedModelError
from ..model import Model, Pooling
from ..model.arch import ArchMap


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError("running a .onnx needs onnxruntime: pip install 'slimformer[export]'") from None
    return onnxruntime


class OnnxModule:
    """Callable like a transformers model: module(input_ids=..., attention_mask=...) gives
    .last_hidden_state and .sentence_embedding (encoders) or .logits (decoders)."""
    runtime = "onnxruntime"

    def __init__(self, path: Path, meta: dict):
        self.path, self.meta = Path(path), meta
        self.config = SimpleNamespace(vocab_size=int(meta.get("vocab_size", 0)), model_type=meta.get("model_type"))
        self._session, self._threads = None, None
        self.can_decode = meta.get("kind") != "causal"  # no KV cache in the graph: bench skips decode

    def session(self):
        threads = torch.get_num_threads()
        if self._session is None or self._threads != threads:
            ort = _ort()
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self._session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
            self._threads = threads
        return self._session

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_) -> SimpleNamespace:
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        feed = {"input_ids": input_ids.numpy().astype(np.int64), "attention_mask": mask.numpy().astype(np.int64)}
        names = self.meta.get("outputs", ["last_hidden_state", "sentence_embedding"])
        return SimpleNamespace(**{n: torch.from_numpy(v) for n, v in zip(names, self.session().run(names, feed))})

    def generate(self, *_, **__):
        raise UnsupportedModelError("the ONNX decoder graph scores sequences (no KV cache); decode with the "
                                    "GGUF export in llama.cpp, or bench with --decode-new-tokens left to a GGUF")

    def param_count(self) -> int:
        return int(self.meta.get("params", 0))

    def describe(self) -> str:
        return f"onnxruntime {_ort().__version__}, opset {self.meta.get('opset')}"


def open_onnx(path: Path, given: str) -> Model:
    folder = path.parent
    meta = read_export_meta(folder, path, "slimformer export --format onnx")
    return folder_model(folder, meta, OnnxModule(path, meta), given, "onnxruntime", "*.onnx*")


def read_export_meta(folder: Path, path: Path, command: str) -> dict:
    from ..export.onnx import EXPORT_META
    meta_path = folder / EXPORT_META
    if not meta_path.is_file():
        raise ModelNotFoundError(f"{path}: no {EXPORT_META} beside it; slimformer runs the folders "
                                 f"`{command}` writes (graph, tokenizer and pooling)")
    return json.loads(meta_path.read_text())


def folder_model(folder: Path, meta: dict, module, given: str, runtime: str, graph_files: str) -> Model:
    """A Model over a runtime adapter, from an export folder's tokenizer, pooling and meta."""
    from transformers import AutoTokenizer
    from ..model.load import _sentence_transformers_config
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError, TypeError) as e:
        raise ModelNotFoundError(f"{folder}: no usable tokenizer ({str(e).splitlines()[0]})") from None
    meta.setdefault("vocab_size", len(tokenizer))
    module.config.vocab_size = int(meta["vocab_size"])
    pooling, extra = _sentence_transformers_config(folder)
    if "pooling" in meta:  # what the exported graph itself pools with
        pooling = Pooling(**meta["pooling"])
    causal = meta.get("kind") == "causal"
    from ..model.families import BY_TYPE
    model_type = meta.get("model_type", "bert")
    amap = ArchMap(family=BY_TYPE[model_type].name if model_type in BY_TYPE else model_type, model_type=model_type,
                   kind=meta.get("kind", "encoder"),
                   hidden_size=int(meta["hidden_size"]), max_positions=int(meta["max_positions"]),
                   blocks=(), embeddings=())
    if causal and tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    size = sum(f.stat().st_size for f in folder.glob(graph_files))
    return Model(module=module, tokenizer=tokenizer, arch=amap, source=given,
                 path=None, pooling=pooling, extra_files=extra, source_bytes=size, runtime=runtime)
