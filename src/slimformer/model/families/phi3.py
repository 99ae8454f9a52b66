"""Phi-3: a Llama-like decoder with fused projections: qkv_proj holds [q; k; v] rows (GQA) and
gate_up_proj holds [gate; up] rows; RMSNorm, SwiGLU, rotary (partial and LongRoPE in variants)."""
from __future__ import annotations

from ..arch import ArchMap, AttentionMap, BlockMap, FFNMap, NormSpec, get_module
from .base import Family, out_features, prefix, rope_spec


def adapter(root, cfg, model_type: str) -> ArchMap:
    p = prefix(root)
    blocks = []
    for i in range(len(get_module(root, f"{p}layers"))):
        b = f"{p}layers.{i}"
        head_dim = get_module(root, f"{b}.self_attn").head_dim
        o = get_module(root, f"{b}.self_attn.o_proj")
        n_heads = (getattr(o, "in_features", None) or o.weight.shape[1]) // head_dim  # o reads every head (a QuantLinear too)
        n_kv = (out_features(get_module(root, f"{b}.self_attn.qkv_proj")) - n_heads * head_dim) // (2 * head_dim)
        blocks.append(BlockMap(
            index=i, name=b,
            attn=AttentionMap(qkv=f"{b}.self_attn.qkv_proj", o=f"{b}.self_attn.o_proj", n_heads=n_heads,
                              n_kv_heads=n_kv, head_dim=head_dim, module=f"{b}.self_attn"),
            ffn=FFNMap(up=f"{b}.mlp.gate_up_proj", down=f"{b}.mlp.down_proj", fused_gate_up=True,
                       width=out_features(get_module(root, f"{b}.mlp.gate_up_proj")) // 2, act=str(cfg.hidden_act)),
            attn_norm=f"{b}.input_layernorm", ffn_norm=f"{b}.post_attention_layernorm", pre_norm=True))
    head = "lm_head" if hasattr(root, "lm_head") else None
    return ArchMap(family="phi3", model_type=model_type, kind="causal", hidden_size=cfg.hidden_size,
                   max_positions=cfg.max_position_embeddings, blocks=tuple(blocks),
                   embeddings=(f"{p}embed_tokens",), final_norm=f"{p}norm", head=head,
                   tied_head=bool(head and cfg.tie_word_embeddings),
                   norm=NormSpec("rms", eps=float(cfg.rms_norm_eps)), rope=rope_spec(cfg),
                   sliding_window=getattr(cfg, "sliding_window", None))


class _OwnHeads:
    """The shared config as one attention module sees it, with that module's own query-head count.

    Phi3Attention's forward splits qkv_proj's output at `self.config.num_attention_heads * head_dim`:
    the count comes from the config every block shares, so a block trimmed on its own (or any
    block before sync_config rewrites the shared count) would split its rows in the wrong place.
    Everything else (attention implementation, sliding window...) is read through from the shared
    config, so later changes to it still reach this module."""

    def __init__(self, shared, num_attention_heads: int):
        self.__dict__["_shared"] = shared
        self.__dict__["num_attention_heads"] = num_attention_heads

    def __getattr__(self, name):
        if name.startswith("__") or name == "_shared":  # copy / pickle probes; never recurse
            raise AttributeError(name)
        return getattr(self._shared, name)

    def __setattr__(self, name, value):
        setattr(self._shared, name, value)


def set_heads(mod, n_heads: int, n_kv_heads: int, head_dim: int) -> None:
    mod.head_dim, mod.num_key_value_heads = head_dim, n_kv_heads
    mod.num_key_value_groups = n_heads // n_kv_heads
    mod.scaling = head_dim ** -0.5
    shared = mod.config.__dict__.get("_shared", mod.config)
    mod.config = _OwnHeads(shared, n_heads)


FAMILY = Family(
    name="phi3", model_types=("phi3",), adapter=adapter, set_heads=set_heads,
    config_keys=dict(heads="num_attention_heads", kv_heads="num_key_value_heads", ffn="intermediate_size",
                     layers="num_hidden_layers", hidden="hidden_size", head_dim="head_dim"),
    # head_dim: Phi3Config has none (hidden / heads) but its attention and rotary read one when set,
    # so a hidden-channel trim keeps the heads whole and writes head_dim (a standard config)
    describe="Phi-3 decoders (phi3; fused qkv_proj and gate_up_proj)",
    gguf_arch={"phi3": "phi3"}, gguf_sources=("phi3",))
