"""Parameter counts and sizes: in memory, and as slimformer saves the model."""
from __future__ import annotations

import tempfile
from pathlib import Path

from ..model import Model
from ..model.info import unique_tensors
from ..model.save import write_folder


def weight_bytes(model: Model) -> int:
    if model.runtime != "torch":  # an exported file: its weights are (almost all of) its bytes
        return int(model.source_bytes or 0)
    return sum(t.numel() * t.element_size() for t in unique_tensors(model, buffers=True))


def saved_size(model: Model) -> int:
    """Bytes of the weight files slimformer writes for this model (what a user ships)."""
    if model.runtime != "torch":
        return int(model.source_bytes or 0)
    if model.lazy is not None:  # writing a model larger than memory to measure it would take minutes
        return weight_bytes(model)  # from shapes and dtypes (no bitmask packing of pruned weights)
    with tempfile.TemporaryDirectory(prefix="slimformer-size-") as tmp:
        write_folder(model, Path(tmp))
        return sum(p.stat().st_size for p in Path(tmp).rglob("*.safetensors"))
