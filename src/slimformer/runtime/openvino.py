"""An OpenVINO IR export run by OpenVINO's CPU plugin, behind the calls evaluate/ and bench/ make.

The model is compiled for torch's current thread count (bench sets it; recompiled when it
changes), one stream, at the precision the IR records (export/openvino.py: f32, so that the
quality is the one slimformer measured; OpenVINO's own CPU default would be bf16 on CPUs that
have it). Shapes stay dynamic: the plugin specialises its kernels per input shape and caches them.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ..errors import UnsupportedModelError
from ..model import Model


class OpenVinoModule:
    """Callable like a transformers encoder: module(input_ids=..., attention_mask=...) gives
    .last_hidden_state and .sentence_embedding."""
    runtime = "openvino"
    can_decode = False

    def __init__(self, path: Path, meta: dict):
        self.path, self.meta = Path(path), meta
        self.config = SimpleNamespace(vocab_size=int(meta.get("vocab_size", 0)), model_type=meta.get("model_type"))
        self._compiled, self._threads = None, None

    def compiled(self):
        from ..export.openvino import _ov
        threads = torch.get_num_threads()
        if self._compiled is None or self._threads != threads:
            ov = _ov()
            core = ov.Core()
            config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1}
            precision = self.meta.get("inference_precision", "f32")
            if precision is not None:  # None: OpenVINO's own default (bf16 where the CPU has it)
                config["INFERENCE_PRECISION_HINT"] = precision
            self._compiled = core.compile_model(core.read_model(str(self.path)), "CPU", config)
            self._threads = threads
        return self._compiled

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_) -> SimpleNamespace:
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        cm = self.compiled()
        out = cm({"input_ids": input_ids.numpy().astype(np.int64), "attention_mask": mask.numpy().astype(np.int64)})
        names = self.meta.get("outputs", ["last_hidden_state", "sentence_embedding"])
        return SimpleNamespace(**{n: torch.from_numpy(np.array(out[cm.output(n)])) for n in names})

    def generate(self, *_, **__):
        raise UnsupportedModelError("the OpenVINO export is a sentence encoder: it embeds, it does not generate")

    def param_count(self) -> int:
        return int(self.meta.get("params", 0))

    def describe(self) -> str:
        from ..export.openvino import _ov
        return f"openvino {_ov().__version__} CPU, {self.meta.get('inference_precision', 'f32') or 'default precision'}"


def open_openvino(path: Path, given: str) -> Model:
    from .onnxrt import folder_model, read_export_meta
    folder = path.parent
    meta = read_export_meta(folder, path, "slimformer export --format openvino")
    return folder_model(folder, meta, OpenVinoModule(path, meta), given, "openvino", "model.*")
