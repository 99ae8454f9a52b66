"""Trimmed shapes and the config: write uniform counts into it, tell when it cannot describe the
weights, and rebuild a module from a shape map when it cannot.

A uniformly trimmed model (the same head / KV-head / FFN counts in every block) gets a config
whose counts plain transformers turns into exactly these shapes: `config_mismatches` checks that
by building the model class from the config on the meta device and comparing every tensor shape.
When it cannot (different counts per block, a BERT or GPT-2 attention narrower than the hidden
size, low-rank factors), the folder is saved in slimformer's own layout with a shape map of the
head counts (`trim` in slimformer.json; compressed modules such as low-rank factors are listed
under `modules`, nn/registry.py) and `apply_shape_map` rebuilds the modules at load.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..nn import compressed_modules
from .arch import get_module
from .families import family
from .model import Model


def sync_config(model: Model) -> None:
    """Write the model's actual block count, hidden size and the per-block counts every block shares
    into its config. With uniform blocks that config describes the model exactly."""
    arch, cfg = model.arch, model.module.config
    keys = family(arch).config_keys
    first = arch.blocks[0]
    values = {"layers": arch.n_layers, "heads": first.attn.n_heads, "kv_heads": first.attn.n_kv_heads,
              "ffn": first.ffn.width, "head_dim": first.attn.head_dim,
              "hidden": get_module(model.module, arch.embeddings[0]).weight.shape[1]}
    # Without an explicit head_dim (BERT, GPT-2) transformers derives it as hidden / heads: write
    # head counts only when that holds, so the config always builds (a shape map covers the rest).
    describable = "head_dim" in keys or values["heads"] * values["head_dim"] == values["hidden"]
    # A count that differs between blocks is left as the config has it: the blocks no trim touched
    # still read it (Phi-3's attention splits qkv_proj at the shared config's head count), and the
    # shape map describes the others.
    per_block = {"heads": {b.attn.n_heads for b in arch.blocks}, "kv_heads": {b.attn.n_kv_heads for b in arch.blocks},
                 "ffn": {b.ffn.width for b in arch.blocks}, "head_dim": {b.attn.head_dim for b in arch.blocks}}
    for what, key in keys.items():
        if what in ("heads", "kv_heads") and not describable:
            continue
        if len(per_block.get(what, ())) > 1:
            continue
        setattr(cfg, key, values[what])


def uniform(model: Model) -> bool:
    shapes = {(b.attn.n_heads, b.attn.n_kv_heads, b.attn.head_dim, b.ffn.width) for b in model.arch.blocks}
    return len(shapes) == 1


def config_mismatches(model: Model, quantized_as_dense: bool = False) -> list[str]:
    """Tensors whose shape plain transformers would not build from the config (empty: standard).
    `quantized_as_dense`: a QuantLinear counts as the linear it stands for (weight [out, in],
    bias), for formats that store quantized layers in the config's own module tree."""
    from ..nn import QuantLinear
    compressed = compressed_modules(model.module)
    dense = {n: m for n, m in compressed.items() if quantized_as_dense and isinstance(m, QuantLinear)}
    if len(dense) < len(compressed):
        return [f"{name} ({type(m).__name__})" for name, m in compressed.items() if name not in dense]
    try:
        with torch.device("meta"):
            ref = type(model.module)(copy.deepcopy(model.module.config))
    except Exception as e:  # the config itself is inconsistent (e.g. hidden not divisible by heads)
        return [f"config rejected by transformers ({str(e).splitlines()[0] if str(e) else type(e).__name__})"]
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    transposed = {f"{n}.weight" for n in model.arch.conv1d_transposed}
    shapes = {k: tuple(t.shape) for k, t in model.module.state_dict().items()
              if k.rpartition(".")[0] not in dense}
    for name, m in dense.items():
        shapes[f"{name}.weight"] = (m.out_features, m.in_features)
        if m.bias is not None:
            shapes[f"{name}.bias"] = (m.out_features,)
    out = []
    for key, shape in shapes.items():
        if key in transposed:
            shape = shape[::-1]
        if key not in want:
            out.append(f"{key} (not in the config's model)")
        elif want[key] != shape:
            out.append(f"{key} {list(shape)} (config gives {list(want[key])})")
    return out


def shape_map(model: Model) -> dict:
    """What `apply_shape_map` needs besides the stored tensor shapes: head counts per attention
    module (compressed modules such as low-rank factors are described by nn/registry.py)."""
    attention = {b.attn.module: [b.attn.n_heads, b.attn.n_kv_heads, b.attn.head_dim] for b in model.arch.blocks}
    return {"family": model.arch.family, "attention": attention}


def apply_shape_map(module: nn.Module, shapes: dict[str, tuple], trim: dict) -> None:
    """Reshape a module built from its config to the stored tensors' shapes (before loading them)."""
    setter = family(trim["family"]).set_heads
    for name, (n_heads, n_kv, head_dim) in trim.get("attention", {}).items():
        setter(get_module(module, name), n_heads, n_kv, head_dim)
    for mod_name, mod in module.named_modules():
        for pname, p in list(mod.named_parameters(recurse=False)):
            key = f"{mod_name}.{pname}" if mod_name else pname
            if key in shapes and tuple(p.shape) != tuple(shapes[key]):
                setattr(mod, pname, nn.Parameter(torch.empty(shapes[key], dtype=p.dtype), requires_grad=p.requires_grad))
        if isinstance(mod, nn.Linear):
            mod.out_features, mod.in_features = mod.weight.shape
        elif isinstance(mod, nn.Embedding):
            mod.num_embeddings, mod.embedding_dim = mod.weight.shape
        elif isinstance(mod, nn.LayerNorm):
            mod.normalized_shape = tuple(mod.weight.shape)
