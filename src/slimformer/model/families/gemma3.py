"""Gemma 3 (gemma3_text): GQA with per-head q/k RMSNorms, four RMSNorms per block (sandwich norms
around attention and FFN), GeGLU, token embeddings scaled by sqrt(hidden), RMSNorm weights stored
as w with the norm computing x / rms(x) * (1 + w), sliding-window and global layers with their
own rotary bases. With `use_bidirectional_attention` the same stack is an encoder (the embedding
models built on Gemma 3)."""
from __future__ import annotations

from ..arch import ArchMap, AttentionMap, BlockMap, FFNMap, NormSpec, get_module
from .base import Family, out_features, prefix, rope_spec


def adapter(root, cfg, model_type: str) -> ArchMap:
    p = prefix(root)
    blocks = []
    layer_types = getattr(cfg, "layer_types", None)
    for i in range(len(get_module(root, f"{p}layers"))):
        b = f"{p}layers.{i}"
        head_dim = get_module(root, f"{b}.self_attn").head_dim
        q = get_module(root, f"{b}.self_attn.q_proj")
        blocks.append(BlockMap(
            index=i, name=b,
            attn=AttentionMap(q=f"{b}.self_attn.q_proj", k=f"{b}.self_attn.k_proj",
                              v=f"{b}.self_attn.v_proj", o=f"{b}.self_attn.o_proj",
                              n_heads=out_features(q) // head_dim,
                              n_kv_heads=out_features(get_module(root, f"{b}.self_attn.k_proj")) // head_dim,
                              head_dim=head_dim, module=f"{b}.self_attn",
                              q_norm=f"{b}.self_attn.q_norm", k_norm=f"{b}.self_attn.k_norm",
                              bias=getattr(q, "bias", None) is not None),
            ffn=FFNMap(gate=f"{b}.mlp.gate_proj", up=f"{b}.mlp.up_proj", down=f"{b}.mlp.down_proj",
                       width=out_features(get_module(root, f"{b}.mlp.up_proj")),
                       act=str(cfg.hidden_activation)),
            attn_norm=f"{b}.input_layernorm", ffn_norm=f"{b}.pre_feedforward_layernorm",
            post_attn_norm=f"{b}.post_attention_layernorm", post_ffn_norm=f"{b}.post_feedforward_layernorm",
            pre_norm=True, attention_type=layer_types[i] if layer_types else "full_attention"))
    head = "lm_head" if hasattr(root, "lm_head") else None
    bidirectional = bool(getattr(cfg, "use_bidirectional_attention", False))
    window = getattr(cfg, "sliding_window", None)
    if bidirectional and window:  # transformers' bidirectional window keeps |q - k| < sliding_window
        window = int(window) - 1
    return ArchMap(family="gemma3", model_type=model_type, kind="encoder" if bidirectional else "causal",
                   hidden_size=cfg.hidden_size, max_positions=cfg.max_position_embeddings,
                   blocks=tuple(blocks), embeddings=(f"{p}embed_tokens",), final_norm=f"{p}norm", head=head,
                   tied_head=bool(head and cfg.tie_word_embeddings),
                   norm=NormSpec("rms", offset=1.0, eps=float(cfg.rms_norm_eps)),
                   embed_scale=float(cfg.hidden_size) ** 0.5, rope=rope_spec(cfg),
                   sliding_window=window, bidirectional=bidirectional,
                   attn_scale=float(cfg.query_pre_attn_scalar) ** -0.5,
                   attn_softcap=getattr(cfg, "attn_logit_softcapping", None))


def set_heads(mod, n_heads: int, n_kv_heads: int, head_dim: int) -> None:
    # Gemma scales logits by query_pre_attn_scalar^-0.5, a config constant: head counts only.
    mod.head_dim, mod.num_key_value_groups = head_dim, n_heads // n_kv_heads


FAMILY = Family(
    name="gemma3", model_types=("gemma3_text",), adapter=adapter, set_heads=set_heads,
    config_keys=dict(heads="num_attention_heads", kv_heads="num_key_value_heads", ffn="intermediate_size",
                     layers="num_hidden_layers", hidden="hidden_size", head_dim="head_dim"),
    describe="Gemma 3 decoders and bidirectional Gemma 3 encoders (gemma3_text)",
    encoder_when=lambda cfg: bool(getattr(cfg, "use_bidirectional_attention", False)),
    onnx="encoder",  # the bidirectional encoder only (exports_for: an encoder graph lowers no decoder)
    # transformers reads llama.cpp's gemma3 GGUFs as gemma3_text
    gguf_arch={"gemma3_text": "gemma3"}, gguf_sources=("gemma3",))
