"""llama.cpp's file types (Q4_K_M, Q3_K_M, ...) as per-tensor GGML types, so that slimformer's
own codes fill exactly the tensors llama-quantize would write at that file type.

The rules are those of llama_tensor_get_type in llama.cpp's src/llama-quant.cpp (read from the
version llama-cpp-python 0.3.36 vendors) for dense, non-Falcon models, the ones slimformer
exports: every quantized tensor starts at the file type's base type; attn_v (a fused qkv counts
as attn_v), ffn_down and attn_output may be moved up by layer index; the output layer (and a
tied token table, which serves as the output) takes Q6_K, or Q8_0 when its rows are not whole
256-column super-blocks or the base is Q8_0; then llama.cpp's width fallbacks (q4_k -> q5_0,
...). Quantization driven by calibration data follows llama.cpp's rules for an importance
matrix (Q4_0 / Q5_0: the first eighth of ffn_down on Q4_1 / Q5_1), so a GPTQ file holds the
tensor types of `llama-quantize --imatrix`, byte for byte the same size.
"""
from __future__ import annotations

from ..errors import ConfigValueError
from ..model.arch import ArchMap
from ..nn.ggml_types import type_for_width

BASE = {"q4_0": "q4_0", "q4_1": "q4_1", "q5_0": "q5_0", "q5_1": "q5_1", "q8_0": "q8_0",
        "q2_k": "q2_k", "q2_k_s": "q2_k", "q3_k_s": "q3_k", "q3_k_m": "q3_k", "q3_k_l": "q3_k",
        "q4_k_s": "q4_k", "q4_k_m": "q4_k", "q5_k_s": "q5_k", "q5_k_m": "q5_k", "q6_k": "q6_k"}


def check_mix(mix: str) -> str:
    m = str(mix).lower()
    if m not in BASE:
        raise ConfigValueError(f"quantize ggml_mix {mix!r} is not a llama.cpp file type slimformer writes; "
                               f"use one of {', '.join(BASE)}")
    return m


def _more_bits(i: int, n: int) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers, and every third between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _attn_v(mix: str, i: int, n: int, n_gqa: int) -> str | None:
    if mix == "q2_k":
        return "q4_k" if n_gqa >= 4 else "q3_k"
    if mix == "q2_k_s" and n_gqa >= 4:
        return "q4_k"
    if mix == "q3_k_m":
        return "q5_k" if i < 2 else "q4_k"
    if mix == "q3_k_l":
        return "q5_k"
    if mix in ("q4_k_m", "q5_k_m") and _more_bits(i, n):
        return "q6_k"
    if mix == "q4_k_s" and i < 4:
        return "q5_k"
    return None


def _ffn_down(mix: str, i: int, n: int, data_driven: bool) -> str | None:
    if mix == "q2_k":
        return "q3_k"
    if mix == "q2_k_s":
        return "q4_k" if i < n // 8 else None
    if mix == "q3_k_m":
        return "q5_k" if i < n // 16 else "q4_k"
    if mix == "q3_k_l":
        return "q5_k"
    if mix in ("q4_k_m", "q5_k_m"):
        return "q6_k" if _more_bits(i, n) else None
    if mix == "q4_k_s":
        return "q5_k" if i < n // 8 else None
    if mix in ("q4_0", "q5_0") and data_driven and i < n // 8:
        return "q4_1" if mix == "q4_0" else "q5_1"
    return None


_ATTN_OUT = {"q2_k": "q3_k", "q3_k_m": "q4_k", "q3_k_l": "q5_k"}


def output_type(mix: str, columns: int) -> str:
    """The output layer's type (and a tied token table's): Q6_K, or Q8_0 (narrow rows, Q8_0 base)."""
    return "q8_0" if columns % 256 or BASE[check_mix(mix)] == "q8_0" else "q6_k"


def _is_70b(gguf_arch: str | None, n_layers: int, n_heads: int, n_kv_heads: int) -> bool:
    """llama.cpp's LLM_TYPE_70B (models/llama.cpp, qwen2.cpp, olmo.cpp): 80 layers; for llama with
    grouped kv heads (equal counts are its 65B)."""
    if n_layers != 80:
        return False
    return n_heads != n_kv_heads if gguf_arch == "llama" else gguf_arch in ("qwen2", "olmo")


def mix_types(arch: ArchMap, mix: str, widths: dict[str, int], data_driven: bool,
              gguf_arch: str | None = None) -> dict[str, str]:
    """{block linear: GGML type} for the linears in `widths` (name -> input columns), after the
    width fallbacks. `data_driven`: the codes come from calibration data (llama.cpp's imatrix
    rules); `gguf_arch`: the llama.cpp architecture the model is written as (its 70B rule)."""
    mix = check_mix(mix)
    base = BASE[mix]
    n = len(arch.blocks)
    out = {}
    for i, blk in enumerate(arch.blocks):
        a, f = blk.attn, blk.ffn
        n_gqa = a.n_heads // max(a.n_kv_heads, 1)
        v = _attn_v(mix, i, n, n_gqa) or base
        if v in ("q3_k", "q4_k") and _is_70b(gguf_arch, n, a.n_heads, a.n_kv_heads):
            v = "q5_k"  # 8 query heads share each attn_v there: more bits for little size
        rules = {a.v or a.qkv: v, f.down: _ffn_down(mix, i, n, data_driven), a.o: _ATTN_OUT.get(mix)}
        for name in blk.linears:
            if name in widths:
                out[name] = type_for_width(rules.get(name) or base, widths[name]).name
    return out
