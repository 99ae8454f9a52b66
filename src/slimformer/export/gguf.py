"""GGUF for llama.cpp: Llama-family decoders (llama, mistral), trimmed ones included.

Shapes come from the weights, not the original config: a trimmed model writes its own layer
count, hidden size, head and KV-head counts and FFN width. llama.cpp's llama graph gives every
layer the same shapes: unequal FFN widths (global allocation) are zero-padded to the widest,
which is exact; unequal head counts are refused. Quantized linears whose grid a GGML type holds
exactly keep slimformer's codes (gguf_blocks.py); other weights are written in `dtype`
(f32, f16, or llama.cpp's own round-to-nearest q8_0 / q4_0 / q4_1). Q and K rows are reordered
for llama.cpp's rotary layout (pairs (i, i + d/2) of HF's rotate-half become adjacent), which is
a permutation of output rows, so quantized groups (along the input) are unaffected.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ConfigValueError, UnsupportedModelError
from ..model import Model
from ..model.arch import get_module
from ..nn import compressed_modules
from .gguf_blocks import DENSE_TYPES, dense_tensor, pack_codes
from . import gguf_vocab

FILE_TYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7}  # llama.cpp's LLAMA_FTYPE_MOSTLY_*
TENSOR_NAMES = {"q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_output",
                "gate": "ffn_gate", "up": "ffn_up", "down": "ffn_down"}


def check_exportable(model: Model) -> None:
    from ..model.families import exports_for
    if "gguf" not in exports_for(model.arch):
        raise UnsupportedModelError(f"GGUF export does not hold {model.arch.model_type!r} models yet; export it "
                                    f"as {' or '.join(exports_for(model.arch))}")
    cfg = model.module.config
    rope = _rope(cfg)
    if rope.get("rope_type", "default") not in ("default", "linear"):
        raise UnsupportedModelError(f"rope scaling {rope.get('rope_type')!r} is not written by slimformer's "
                                    "GGUF export (default and linear are); export as hf")
    if getattr(cfg, "mlp_bias", False):
        raise UnsupportedModelError("FFN biases (mlp_bias) are not held by llama.cpp's llama architecture")


def _rope(cfg) -> dict:
    params = getattr(cfg, "rope_parameters", None) or {}
    if not params:
        params = {"rope_theta": getattr(cfg, "rope_theta", 10000.0), **(getattr(cfg, "rope_scaling", None) or {})}
    return dict(params)


def _rotary_order(rows: int, n_heads: int) -> torch.Tensor:
    """Row order that turns HF's rotate-half layout into llama.cpp's interleaved pairs."""
    half = rows // n_heads // 2
    return torch.arange(rows).view(n_heads, 2, half).transpose(1, 2).reshape(-1)


def write_gguf(model: Model, path: Path, dtype: str = "f16", embedding_dtype: str | None = None,
               source_gguf: Path | None = None) -> dict:
    """Write `model` to the GGUF file `path` (the caller makes it atomic); returns what was written."""
    from gguf import GGMLQuantizationType, GGUFWriter
    if dtype not in DENSE_TYPES or (embedding_dtype or dtype) not in DENSE_TYPES:
        raise ConfigValueError(f"GGUF type {dtype!r}: choose one of {', '.join(DENSE_TYPES)}")
    arch, cfg, root = model.arch, model.module.config, model.module
    from ..model.families import family
    writer = GGUFWriter(str(path), family(arch).gguf_arch[arch.model_type])
    tensors, kinds, exact = [], Counter(), []

    def add(name: str, data: np.ndarray, kind: str):
        tensors.append((name, data, kind))
        kinds[kind] += 1

    emb = get_module(root, arch.embeddings[0]).weight
    add("token_embd.weight", *dense_tensor(emb, embedding_dtype or dtype))
    head_dim = arch.blocks[0].attn.head_dim
    ffn_width = _check_uniform(model)
    for blk in arch.blocks:
        a = blk.attn
        prefix = f"blk.{blk.index}"
        add(f"{prefix}.attn_norm.weight", *dense_tensor(get_module(root, blk.attn_norm).weight, "f32"))
        add(f"{prefix}.ffn_norm.weight", *dense_tensor(get_module(root, blk.ffn_norm).weight, "f32"))
        roles = {"q": a.q, "k": a.k, "v": a.v, "o": a.o, "gate": blk.ffn.gate, "up": blk.ffn.up,
                 "down": blk.ffn.down}
        for role, name in roles.items():
            rotary_heads = {"q": a.n_heads, "k": a.n_kv_heads}.get(role)
            order = _rotary_order(rotary_heads * head_dim, rotary_heads) if rotary_heads else None
            pad = (ffn_width - blk.ffn.width) if role in ("gate", "up", "down") else 0
            data, kind, is_exact = _linear(get_module(root, name), name, dtype, order, pad, role == "down")
            add(f"{prefix}.{TENSOR_NAMES[role]}.weight", data, kind)
            if is_exact:
                exact.append(name)
            bias = getattr(get_module(root, name), "bias", None)
            if bias is not None:
                b = bias.detach()[order] if order is not None else bias.detach()
                add(f"{prefix}.{TENSOR_NAMES[role]}.bias", b.float().numpy(), "f32")
    add("output_norm.weight", *dense_tensor(get_module(root, arch.final_norm).weight, "f32"))
    if not model.head_is_tied:
        data, kind, is_exact = _linear(get_module(root, arch.head), arch.head, embedding_dtype or dtype, None)
        add("output.weight", data, kind)
        if is_exact:
            exact.append(arch.head)

    blk0 = arch.blocks[0].attn
    _write_metadata(writer, model, cfg, blk0.n_heads, blk0.n_kv_heads, ffn_width, head_dim, kinds)
    if source_gguf is not None:
        gguf_vocab.copy_from_gguf(writer, source_gguf)
    else:
        gguf_vocab.build_from_hf(writer, model.tokenizer, emb.shape[0])
    for name, data, kind in tensors:
        if kind in ("f32", "f16"):
            writer.add_tensor(name, data)
        else:
            writer.add_tensor(name, data, raw_dtype=getattr(GGMLQuantizationType, kind.upper()))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    padded = sum(ffn_width - b.ffn.width for b in arch.blocks)
    return {"tensor_types": dict(kinds), "exact_codes": len(exact), "ffn_zero_padding": padded,
            "tokenizer": f"copied from {source_gguf.name}" if source_gguf else "built from the HF tokenizer"}


def _check_uniform(model: Model) -> int:
    """llama.cpp's llama graph gives every layer layer 0's head counts and FFN width. Unequal FFN
    widths are padded with zero neurons (exact: silu(0) * 0 = 0 meets zero columns of down);
    unequal head counts cannot be, and quantized layers are not padded. Returns the FFN width."""
    blocks = model.arch.blocks
    if len({(b.attn.n_heads, b.attn.n_kv_heads, b.attn.head_dim) for b in blocks}) > 1:
        raise UnsupportedModelError("llama.cpp's llama architecture needs the same head counts in every layer; "
                                    "trim heads with allocation: uniform to export as GGUF")
    widths = [b.ffn.width for b in blocks]
    if len(set(widths)) > 1 and compressed_modules(model.module):
        raise UnsupportedModelError("quantized layers with unequal FFN widths cannot be written to GGUF "
                                    "(llama.cpp needs one width); trim the FFN with allocation: uniform")
    return max(widths)


def _linear(mod: nn.Module, name: str, dtype: str, order: torch.Tensor | None, pad: int = 0,
            pad_columns: bool = False) -> tuple[np.ndarray, str, bool]:
    from ..nn.quant_linear import QuantLinear
    if isinstance(mod, QuantLinear):
        if mod.input_scale is not None:
            raise UnsupportedModelError(f"{name} carries an unfolded smoothing vector (input_scale), which "
                                        "GGUF cannot hold; quantize without it (or export as hf)")
        q, scales, zeros = mod.codes(), mod.scales, mod.zeros
        if order is not None:
            q, scales, zeros = q[order], scales[order], zeros[order]
        data, kind = pack_codes(q, scales, zeros, mod.spec.bits, mod.spec.group_size, mod.spec.symmetric)
        return data, kind, True
    weight = getattr(mod, "weight", None)
    if not isinstance(mod, nn.Linear) or weight is None:
        raise UnsupportedModelError(f"{name} is a {type(mod).__name__} (e.g. a low-rank factorisation), "
                                    "which llama.cpp's llama graph cannot run; export as hf")
    w = weight.detach()
    if pad:  # zero FFN neurons up to the common width (rows of gate / up, columns of down)
        w = torch.nn.functional.pad(w, (0, pad) if pad_columns else (0, 0, 0, pad))
    data, kind = dense_tensor(w[order] if order is not None else w, dtype)
    return data, kind, False


def _write_metadata(writer, model: Model, cfg, heads: int, kv_heads: int, width: int, head_dim: int,
                    kinds: Counter) -> None:
    arch = model.arch
    writer.add_name(model.name)
    writer.add_description(f"written by slimformer from {model.name}; stages: "
                           f"{', '.join(e['stage'] for e in model.log) or 'none'}")
    writer.add_block_count(arch.n_layers)
    writer.add_context_length(int(arch.max_positions))
    writer.add_embedding_length(int(arch.hidden_size))
    writer.add_feed_forward_length(width)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    rope = _rope(cfg)
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    if rope.get("rope_type") == "linear":
        from gguf import RopeScalingType
        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_vocab_size(int(get_module(model.module, arch.embeddings[0]).weight.shape[0]))
    linear_kinds = Counter({k: n for k, n in kinds.items() if k != "f32"}) or kinds
    writer.add_file_type(FILE_TYPE[linear_kinds.most_common(1)[0][0]])
    writer.add_quantization_version(2)


def source_gguf_of(model: Model) -> Path | None:
    """The .gguf file the model was first loaded from (its tokenizer is copied as is), if any."""
    import json
    from ..model.sources import resolve
    candidates = [model.source]
    if model.path is not None and (model.path / "slimformer.json").is_file():
        candidates.insert(0, json.loads((model.path / "slimformer.json").read_text()).get("source", ""))
    for given in candidates:
        try:
            src = resolve(str(given))
        except Exception:
            continue
        if src.kind == "gguf":
            return Path(src.location)
    return None
