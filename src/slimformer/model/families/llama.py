"""Llama-family decoders: llama (SmolLM), mistral, qwen2 (q/k/v biases), qwen3 (per-head q/k RMSNorms,
explicit head_dim). Pre-norm RMSNorm blocks,
GQA, SwiGLU, rotary positions."""
from __future__ import annotations

from ..arch import ArchMap, AttentionMap, BlockMap, FFNMap, NormSpec, get_module
from .base import Family, has, out_features, prefix, rope_spec


def adapter(root, cfg, model_type: str) -> ArchMap:
    p = prefix(root)
    blocks = []
    layer_types = getattr(cfg, "layer_types", None)
    for i in range(len(get_module(root, f"{p}layers"))):
        b = f"{p}layers.{i}"
        head_dim = get_module(root, f"{b}.self_attn").head_dim
        q = get_module(root, f"{b}.self_attn.q_proj")
        n_heads = out_features(q) // head_dim
        n_kv = out_features(get_module(root, f"{b}.self_attn.k_proj")) // head_dim
        blocks.append(BlockMap(
            index=i, name=b,
            attn=AttentionMap(q=f"{b}.self_attn.q_proj", k=f"{b}.self_attn.k_proj",
                              v=f"{b}.self_attn.v_proj", o=f"{b}.self_attn.o_proj",
                              n_heads=n_heads, n_kv_heads=n_kv, head_dim=head_dim, module=f"{b}.self_attn",
                              q_norm=f"{b}.self_attn.q_norm" if has(root, f"{b}.self_attn.q_norm") else None,
                              k_norm=f"{b}.self_attn.k_norm" if has(root, f"{b}.self_attn.k_norm") else None,
                              bias=getattr(q, "bias", None) is not None),
            ffn=FFNMap(gate=f"{b}.mlp.gate_proj", up=f"{b}.mlp.up_proj", down=f"{b}.mlp.down_proj",
                       width=out_features(get_module(root, f"{b}.mlp.up_proj")), act=str(cfg.hidden_act)),
            attn_norm=f"{b}.input_layernorm", ffn_norm=f"{b}.post_attention_layernorm",
            pre_norm=True, attention_type=layer_types[i] if layer_types else "full_attention"))
    head = "lm_head" if hasattr(root, "lm_head") else None
    return ArchMap(family="llama", model_type=model_type, kind="causal", hidden_size=cfg.hidden_size,
                   max_positions=cfg.max_position_embeddings, blocks=tuple(blocks),
                   embeddings=(f"{p}embed_tokens",), final_norm=f"{p}norm", head=head,
                   tied_head=bool(head and cfg.tie_word_embeddings),
                   norm=NormSpec("rms", eps=float(cfg.rms_norm_eps)), rope=rope_spec(cfg),
                   sliding_window=getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True)
                   else None)


def set_heads(mod, n_heads: int, n_kv_heads: int, head_dim: int) -> None:
    mod.head_dim, mod.num_key_value_groups = head_dim, n_heads // n_kv_heads


FAMILY = Family(
    name="llama", model_types=("llama", "mistral", "qwen2", "qwen3"), adapter=adapter, set_heads=set_heads,
    config_keys=dict(heads="num_attention_heads", kv_heads="num_key_value_heads", ffn="intermediate_size",
                     layers="num_hidden_layers", hidden="hidden_size", head_dim="head_dim"),
    describe="Llama-family decoders (llama, mistral, qwen2, qwen3 with its per-head q/k norms; SmolLM is llama)",
    onnx="decoder", gguf_arch={"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"},
    gguf_sources=("llama", "mistral", "qwen2", "qwen3"))
