"""Save a Model: a standard HF folder (dense), or with pruned weights stored compressed.

Dense models are written with transformers' save_pretrained, so plain transformers loads them.
A model with pruning masks or quantized linears is written as `slimformer.safetensors` (pruned
weights in the bitmask-v1 layout of sparse_io.py; quantized linears as their QuantLinear buffers,
`<name>.qweight / .scales / .zeros [/ .bias / .input_scale / .act_scale]`, described per layer in
slimformer.json under "quant"; the rest as is, linear [out, in] layout) plus the usual config
and tokenizer; `slimformer.load` restores bit-identical weights, masks and kernels. Plain
transformers refuses such a folder (no model.safetensors) instead of loading it wrongly.
"""
from __future__ import annotations

import os
from pathlib import Path

from safetensors.torch import save_file

from ..atomic import atomic_dir
from ..nn import describe_modules
from ..version import __version__
from . import sparse_io
from .model import Model

META_FILE = "slimformer.json"
SPARSE_WEIGHTS = "slimformer.safetensors"


def save(model: Model, out: str | os.PathLike, overwrite: bool = False, dense: bool = False) -> Path:
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_folder(model, tmp, dense=dense)
    return out


def write_folder(model: Model, folder: Path, dense: bool = False) -> None:
    meta = {"slimformer_version": __version__, "source": model.source, "stages": model.log}
    from .shapes import config_mismatches
    compressed = describe_modules(model.module)
    nonstandard = [] if compressed else config_mismatches(model)
    if (compressed or nonstandard) and dense:
        raise ValueError("a model with compressed modules (quantized, low-rank), or a trimmed one its "
                         "config cannot describe, cannot be saved as a plain dense folder; save it without dense=True")
    if (model.masks or compressed or nonstandard) and not dense:
        meta.update(_write_sparse(model, folder))
    else:
        _write_dense(model, folder)
    write_tokenizer_files(model, folder)
    from ..results import dumps  # strict JSON: a NaN in a stage log is written as null
    (folder / META_FILE).write_text(dumps(meta, indent=2) + "\n")


def write_tokenizer_files(model: Model, folder: Path) -> None:
    """The tokenizer and the files kept from the source (sentence-transformers pooling configs)."""
    model.tokenizer.save_pretrained(folder)
    for rel, data in model.extra_files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)


def _write_dense(model: Model, folder: Path) -> None:
    state = model.module.state_dict()
    # GPT-2 Conv1D weights were turned into Linear [out, in] at load; store them as
    # transformers expects ([in, out]) so the folder loads without slimformer.
    for name in model.arch.conv1d_transposed:
        state[f"{name}.weight"] = state[f"{name}.weight"].t().contiguous()
    model.module.save_pretrained(folder, state_dict=state)


def _write_sparse(model: Model, folder: Path) -> dict:
    tensors, tied, seen = {}, {}, {}
    state = model.module.state_dict()
    masked = {f"{n}.weight": n for n in model.masks if f"{n}.weight" in state}
    for key, t in state.items():
        if t.data_ptr() in seen and t.numel():  # tied weights are stored once
            tied[key] = seen[t.data_ptr()]
            continue
        seen[t.data_ptr()] = key
        if key in masked:
            tensors.update(sparse_io.pack(key, t, model.masks[masked[key]]))
        else:
            tensors[key] = t.contiguous()
    save_file(tensors, str(folder / SPARSE_WEIGHTS), metadata={"format": "pt", "slimformer": sparse_io.FORMAT})
    model.module.config.save_pretrained(folder)
    if getattr(model.module, "generation_config", None) is not None and model.module.can_generate():
        model.module.generation_config.save_pretrained(folder)
    meta = {"weights": SPARSE_WEIGHTS, "layout": "linear",
            "sparse": {"format": sparse_io.FORMAT, "tensors": sorted(masked)}, "tied": tied}
    meta["modules"] = describe_modules(model.module)  # quantized, low-rank: rebuilt empty at load
    from .shapes import shape_map
    meta["trim"] = shape_map(model)  # head counts the config cannot hold
    return meta
