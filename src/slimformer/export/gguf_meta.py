"""The header of a GGUF export: shapes from the weights, the rest from the ArchMap.

Sliding windows: an architecture with sliding layers (Gemma 3) gets the window, the per-layer
pattern and the sliding layers' rope base written. One without them in llama.cpp (llama, qwen2,
phi3: llama.cpp disables Phi-3's window) would attend past the window where PyTorch does not, so
its context length is capped at the window: inside it both compute the same.
"""
from __future__ import annotations

from collections import Counter

from ..model.arch import ArchMap
from .gguf_targets import Target

# llama.cpp's LLAMA_FTYPE_MOSTLY_* of the commonest linear type (informational: llama.cpp reads each
# tensor's own type); a K-quant names its "_S" file type
FILE_TYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9, "q2_k": 10, "q3_k": 11, "q4_k": 14,
             "q5_k": 16, "q6_k": 18}


def context_length(arch: ArchMap, t: Target) -> int:
    window = arch.sliding_window
    if window and not t.sliding and window < arch.max_positions:
        return int(window)
    return int(arch.max_positions)


def write_metadata(writer, arch: ArchMap, t: Target, name: str, description: str, ffn_width: int,
                   vocab_size: int, kinds: Counter) -> None:
    a0 = arch.blocks[0].attn
    writer.add_name(name)
    writer.add_description(description)
    writer.add_block_count(arch.n_layers)
    writer.add_context_length(context_length(arch, t))
    writer.add_embedding_length(int(arch.hidden_size))
    writer.add_feed_forward_length(ffn_width)
    writer.add_head_count(a0.n_heads)
    writer.add_head_count_kv(a0.n_kv_heads)
    writer.add_key_length(a0.head_dim)
    writer.add_value_length(a0.head_dim)
    rope = arch.rope
    writer.add_rope_dimension_count(int(a0.head_dim * rope.partial))
    writer.add_rope_freq_base(rope.theta)
    if rope.scaling == "linear":
        from gguf import RopeScalingType
        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope.factor)
    if t.sliding:  # written always: llama.cpp's default pattern (every 6th layer global) may not be ours
        writer.add_sliding_window(int(arch.sliding_window or arch.max_positions))
        writer.add_sliding_window_pattern([b.attention_type == "sliding_attention" for b in arch.blocks])
        writer.add_rope_freq_base_swa(rope.local_theta if rope.local_theta is not None else rope.theta)
    writer.add_layer_norm_rms_eps(arch.norm.eps)
    writer.add_vocab_size(vocab_size)
    linear_kinds = Counter({k: n for k, n in kinds.items() if k != "f32"}) or kinds
    writer.add_file_type(FILE_TYPE[linear_kinds.most_common(1)[0][0]])
    writer.add_quantization_version(2)
