"""Save a Model: a standard HF folder (dense), or with pruned weights stored compressed.

Dense models are written with transformers' save_pretrained, so plain transformers loads them.
A model with pruning masks or quantized linears is written as `slimformer.safetensors` (pruned
weights in the bitmask-v1 layout of sparse_io.py; quantized linears as their QuantLinear buffers,
`<name>.qweight / .scales / .zeros [/ .bias / .input_scale / .act_scale / .act_zero]`, described per layer in
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
SHARDED_WEIGHTS = "slimformer.safetensors.index.json"  # a lazily loaded model: one shard per block


def save(model: Model, out: str | os.PathLike, overwrite: bool = False, dense: bool = False) -> Path:
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_folder(model, tmp, dense=dense)
    return out


def base_meta(model: Model) -> dict:
    """slimformer.json's provenance: version, source, the stages' logs."""
    return {"slimformer_version": __version__, "source": model.source, "stages": model.log}


def write_meta(folder: Path, meta: dict) -> None:
    from ..results import dumps  # strict JSON: a NaN in a stage log is written as null
    (folder / META_FILE).write_text(dumps(meta, indent=2) + "\n")


def own_layout_reason(model: Model) -> str | None:
    """Why the model needs slimformer's own layout rather than a standard HF folder, or None."""
    from .shapes import config_mismatches
    if describe_modules(model.module):
        return "compressed modules (quantized or low-rank linears)"
    if config_mismatches(model):
        return "trimmed shapes the config cannot state"
    if model.masks:
        return "pruning masks (stored as bitmasks)"
    return None


def write_folder(model: Model, folder: Path, dense: bool = False) -> None:
    meta = base_meta(model)
    own = own_layout_reason(model)
    if own and not own.startswith("pruning") and dense:
        raise ValueError("a model with compressed modules (quantized, low-rank), or a trimmed one its "
                         "config cannot describe, cannot be saved as a plain dense folder; save it without dense=True")
    if own and not dense:
        meta.update(_write_sparse(model, folder))
    else:
        _write_dense(model, folder)
    write_tokenizer_files(model, folder)
    write_meta(folder, meta)


def write_tokenizer_files(model: Model, folder: Path) -> None:
    """The tokenizer and the files kept from the source (sentence-transformers pooling configs)."""
    model.tokenizer.save_pretrained(folder)
    for rel, data in model.extra_files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)


def _write_dense(model: Model, folder: Path) -> None:
    if model.lazy is not None:
        return _write_dense_streamed(model, folder)
    state = model.module.state_dict()
    # GPT-2 Conv1D weights were turned into Linear [out, in] at load; store them as
    # transformers expects ([in, out]) so the folder loads without slimformer.
    for name in model.arch.conv1d_transposed:
        state[f"{name}.weight"] = state[f"{name}.weight"].t().contiguous()
    model.module.save_pretrained(folder, state_dict=state)


def _write_dense_streamed(model: Model, folder: Path) -> None:
    """The standard sharded HF layout (model-0000i-of-0000n.safetensors + index), one block per
    shard, so plain transformers loads it and only one block is resident while writing."""
    chunks = _chunk_names(model)
    weight_map, total = {}, 0
    for i, (_, state) in enumerate(_state_chunks(model, chunks)):
        tensors, seen = {}, set()
        for key, t in state.items():
            if t.data_ptr() in seen and t.numel():
                continue  # a tied head: transformers ties it again on loading
            seen.add(t.data_ptr())
            name = key[: -len(".weight")] if key.endswith(".weight") else None
            tensors[key] = (t.t() if name in model.arch.conv1d_transposed else t).contiguous()
        shard = f"model-{i + 1:05d}-of-{len(chunks):05d}.safetensors"
        save_file(tensors, str(folder / shard), metadata={"format": "pt"})
        weight_map.update({k: shard for k in tensors})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        del state, tensors
    from ..results import dumps
    (folder / "model.safetensors.index.json").write_text(
        dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    model.module.config.save_pretrained(folder)
    if getattr(model.module, "generation_config", None) is not None and model.module.can_generate():
        model.module.generation_config.save_pretrained(folder)


def _write_sparse(model: Model, folder: Path) -> dict:
    tied, masked, weight_map = {}, set(), {}
    chunks = list(_chunk_names(model))
    for i, (label, state) in enumerate(_state_chunks(model, chunks)):
        tensors, seen = {}, {}  # ties are looked for within a chunk (freed memory is reused after)
        masks = {f"{n}.weight": n for n in model.masks if f"{n}.weight" in state}
        for key, t in state.items():
            if t.data_ptr() in seen and t.numel():  # tied weights are stored once
                tied[key] = seen[t.data_ptr()]
                continue
            seen[t.data_ptr()] = key
            if key in masks:
                tensors.update(sparse_io.pack(key, t, model.masks[masks[key]]))
                masked.add(key)
            else:
                tensors[key] = t.contiguous()
        name = SPARSE_WEIGHTS if len(chunks) == 1 else f"slimformer-{i + 1:05d}-of-{len(chunks):05d}.safetensors"
        save_file(tensors, str(folder / name), metadata={"format": "pt", "slimformer": sparse_io.FORMAT})
        weight_map.update({k: name for k in tensors})
        del state, tensors
    if len(chunks) > 1:
        from ..results import dumps
        (folder / SHARDED_WEIGHTS).write_text(dumps({"metadata": {"format": sparse_io.FORMAT},
                                                     "weight_map": weight_map}, indent=2) + "\n")
    model.module.config.save_pretrained(folder)
    if getattr(model.module, "generation_config", None) is not None and model.module.can_generate():
        model.module.generation_config.save_pretrained(folder)
    meta = {"weights": SPARSE_WEIGHTS if len(chunks) == 1 else SHARDED_WEIGHTS, "layout": "linear",
            "sparse": {"format": sparse_io.FORMAT, "tensors": sorted(masked)}, "tied": tied}
    meta["modules"] = describe_modules(model.module)  # quantized, low-rank: rebuilt empty at load
    from .shapes import shape_map
    meta["trim"] = shape_map(model)  # head counts the config cannot hold
    return meta


def _chunk_names(model: Model) -> list[str | None]:
    """What is written together: the whole state in memory; lazily, the tensors outside the
    blocks (None) and then one block at a time, so only one block is ever resident."""
    return [None] + list(model.lazy.blocks) if model.lazy is not None else [None]


def _state_chunks(model: Model, chunks: list[str | None]):
    if model.lazy is None:
        yield None, model.module.state_dict()
        return
    lazy = model.lazy
    with lazy.hold_rest(model.module):
        yield None, {k: v for k, v in model.module.state_dict().items() if not lazy._in_block(k)}
    for name in chunks[1:]:
        block = model.module.get_submodule(name)
        with lazy.hold(block, name):
            yield name, {f"{name}.{k}": v for k, v in block.state_dict().items()}


def read_sparse_weights(folder: Path, meta: dict) -> dict:
    """The tensors of a folder written by _write_sparse (one file, or shards with an index)."""
    from safetensors.torch import load_file
    if meta.get("weights") != SHARDED_WEIGHTS:
        return load_file(str(folder / SPARSE_WEIGHTS))
    import json
    files = sorted(set(json.loads((folder / SHARDED_WEIGHTS).read_text())["weight_map"].values()))
    stored = {}
    for f in files:
        stored.update(load_file(str(folder / f)))
    return stored
