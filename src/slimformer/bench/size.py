"""Parameter counts and sizes: in memory, and as slimformer saves the model."""
from __future__ import annotations

import tempfile
from pathlib import Path

from ..model import Model
from ..model.save import write_folder


def unique_tensors(model: Model, buffers: bool = False):
    seen = set()
    items = list(model.module.parameters()) + (list(model.module.buffers()) if buffers else [])
    for t in items:
        if t.data_ptr() in seen:  # tied weights count once
            continue
        seen.add(t.data_ptr())
        yield t


def param_count(model: Model) -> int:
    """Weights of the model, quantized ones included (as the number of values they stand for)."""
    if model.runtime != "torch":
        return model.module.param_count()
    from ..model.info import stored_weights
    return sum(t.numel() for t in unique_tensors(model)) + stored_weights(model.module)


def weight_bytes(model: Model) -> int:
    if model.runtime != "torch":  # an exported file: its weights are (almost all of) its bytes
        return int(model.source_bytes or 0)
    return sum(t.numel() * t.element_size() for t in unique_tensors(model, buffers=True))


def saved_size(model: Model) -> int:
    """Bytes of the weight files slimformer writes for this model (what a user ships)."""
    if model.runtime != "torch":
        return int(model.source_bytes or 0)
    with tempfile.TemporaryDirectory(prefix="slimformer-size-") as tmp:
        write_folder(model, Path(tmp))
        return sum(p.stat().st_size for p in Path(tmp).rglob("*.safetensors"))
