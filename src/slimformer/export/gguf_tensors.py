"""The tensors of a GGUF export, named by gguf-py's constants and laid out as llama.cpp reads them.

- Norm weights are written as llama.cpp multiplies them: offset + w (Gemma stores w and computes
  x / rms(x) * (1 + w); llama.cpp's converter writes 1 + w the same way).
- Q and K rows are reordered for architectures with llama.cpp's interleaved ("norm") rope: HF's
  rotate-half pairs (i, i + d/2) become adjacent. That permutes output rows only, so quantized
  groups (along the input) keep their codes. NeoX-rope architectures take HF's rows as they are.
- A fused qkv keeps its [q; k; v] rows, a fused gate_up its [gate; up] rows (llama.cpp splits
  them itself); unequal FFN widths are zero-padded to the widest (exact: act(0) * 0 = 0 meets
  zero columns of down), each half of a fused gate_up on its own.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from gguf import MODEL_TENSOR, TENSOR_NAMES
from torch import nn

from ..errors import UnsupportedModelError
from ..model.arch import ArchMap, BlockMap, get_module
from .gguf_blocks import dense_tensor, pack_codes
from .gguf_targets import Target

Tensor = tuple[str, np.ndarray, str, str | None]  # GGUF name, data, GGML type, exact-coded module or None


def tensor_name(kind: MODEL_TENSOR, block: int | None = None, suffix: str = "weight") -> str:
    base = TENSOR_NAMES[kind]
    return f"{base.format(bid=block) if block is not None else base}.{suffix}"


def rotary_order(rows: int, n_heads: int) -> torch.Tensor:
    """Row order that turns HF's rotate-half layout into llama.cpp's interleaved pairs."""
    half = rows // n_heads // 2
    return torch.arange(rows).view(n_heads, 2, half).transpose(1, 2).reshape(-1)


def _norm(root: nn.Module, name: str, offset: float) -> np.ndarray:
    return (get_module(root, name).weight.detach().float() + offset).numpy()


def model_tensors(root: nn.Module, arch: ArchMap, t: Target, dtype: str, embedding_dtype: str,
                  ffn_width: int, tied: bool) -> Iterator[Tensor]:
    emb = get_module(root, arch.embeddings[0]).weight
    yield (tensor_name(MODEL_TENSOR.TOKEN_EMBD), *dense_tensor(emb, embedding_dtype), None)
    for blk in arch.blocks:
        yield from block_tensors(root, arch, blk, t, dtype, ffn_width)
    yield tensor_name(MODEL_TENSOR.OUTPUT_NORM), _norm(root, arch.final_norm, arch.norm.offset), "f32", None
    if not tied:
        data, kind, exact = linear_tensor(get_module(root, arch.head), arch.head, embedding_dtype)
        yield tensor_name(MODEL_TENSOR.OUTPUT), data, kind, arch.head if exact else None


def block_tensors(root: nn.Module, arch: ArchMap, blk: BlockMap, t: Target, dtype: str,
                  ffn_width: int) -> Iterator[Tensor]:
    a, f, i, off = blk.attn, blk.ffn, blk.index, arch.norm.offset
    norms = {MODEL_TENSOR.ATTN_NORM: blk.attn_norm, MODEL_TENSOR.ATTN_Q_NORM: a.q_norm,
             MODEL_TENSOR.ATTN_K_NORM: a.k_norm, MODEL_TENSOR.ATTN_POST_NORM: blk.post_attn_norm,
             MODEL_TENSOR.FFN_NORM: blk.ffn_norm, MODEL_TENSOR.FFN_POST_NORM: blk.post_ffn_norm}
    for kind, name in norms.items():
        if name:
            yield tensor_name(kind, i), _norm(root, name, off), "f32", None
    q_rows, kv_rows = a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim
    q_order = rotary_order(q_rows, a.n_heads) if t.interleaved_rope else None
    k_order = rotary_order(kv_rows, a.n_kv_heads) if t.interleaved_rope else None
    if a.fused:
        order = None if q_order is None else \
            torch.cat([q_order, q_rows + k_order, torch.arange(q_rows + kv_rows, q_rows + 2 * kv_rows)])
        projections = [(MODEL_TENSOR.ATTN_QKV, a.qkv, order)]
    else:
        projections = [(MODEL_TENSOR.ATTN_Q, a.q, q_order), (MODEL_TENSOR.ATTN_K, a.k, k_order),
                       (MODEL_TENSOR.ATTN_V, a.v, None)]
    projections.append((MODEL_TENSOR.ATTN_OUT, a.o, None))
    pad = ffn_width - f.width
    ffn = [(MODEL_TENSOR.FFN_UP, f.up, None), (MODEL_TENSOR.FFN_DOWN, f.down, None)]
    if f.gate:
        ffn.insert(0, (MODEL_TENSOR.FFN_GATE, f.gate, None))
    for kind, name, order in projections + ffn:
        mod = get_module(root, name)
        is_ffn = kind in (MODEL_TENSOR.FFN_GATE, MODEL_TENSOR.FFN_UP, MODEL_TENSOR.FFN_DOWN)
        halves = 2 if kind == MODEL_TENSOR.FFN_UP and f.fused_gate_up else 1
        data, ggml, exact = linear_tensor(mod, name, dtype, order, pad if is_ffn else 0,
                                          kind == MODEL_TENSOR.FFN_DOWN, halves)
        yield tensor_name(kind, i), data, ggml, name if exact else None
        bias = getattr(mod, "bias", None)
        if bias is not None:
            b = bias.detach().float()
            yield tensor_name(kind, i, "bias"), (b[order] if order is not None else b).numpy(), "f32", None


def linear_tensor(mod: nn.Module, name: str, dtype: str, order: torch.Tensor | None = None, pad: int = 0,
                  pad_columns: bool = False, halves: int = 1) -> tuple[np.ndarray, str, bool]:
    """(data, GGML type, whether slimformer's own integer codes went in exactly)."""
    from ..nn.ggml_blocks import pack
    from ..nn.ggml_linear import GgmlLinear
    from ..nn.quant_linear import QuantLinear
    if isinstance(mod, GgmlLinear):  # its codes and stored numbers are the blocks' (rows reordered at most)
        grid = mod.grid()
        u, stored = mod.u(), grid.stored
        if order is not None:
            u, stored = u[order], {k: v[order] for k, v in stored.items()}
        return pack(u, mod.type, stored), mod.type.name, True
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
                                    "which llama.cpp's graphs cannot run; export as hf")
    w = weight.detach()
    if pad:  # zero FFN neurons up to the common width (rows of gate / up, columns of down)
        if pad_columns:
            w = torch.nn.functional.pad(w, (0, pad))
        else:
            parts = w.reshape(halves, -1, w.shape[1])
            w = torch.nn.functional.pad(parts, (0, 0, 0, pad)).reshape(-1, w.shape[1])
    return (*dense_tensor(w[order] if order is not None else w, dtype), False)
