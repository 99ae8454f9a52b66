"""GPT-2: fused c_attn [q; k; v], Conv1D weights (turned into Linear at load), pre-norm."""
from __future__ import annotations

from ..arch import ArchMap, AttentionMap, BlockMap, FFNMap, NormSpec, get_module
from .base import Family, out_features, prefix


def adapter(root, cfg, model_type: str) -> ArchMap:
    p = prefix(root)
    blocks, conv = [], []
    for i in range(len(get_module(root, f"{p}h"))):
        b = f"{p}h.{i}"
        at = get_module(root, f"{b}.attn")
        blocks.append(BlockMap(
            index=i, name=b,
            attn=AttentionMap(qkv=f"{b}.attn.c_attn", o=f"{b}.attn.c_proj", n_heads=at.num_heads,
                              n_kv_heads=at.num_heads, head_dim=at.head_dim, module=f"{b}.attn", bias=True),
            ffn=FFNMap(up=f"{b}.mlp.c_fc", down=f"{b}.mlp.c_proj",
                       width=out_features(get_module(root, f"{b}.mlp.c_fc")), act=str(cfg.activation_function)),
            attn_norm=f"{b}.ln_1", ffn_norm=f"{b}.ln_2", pre_norm=True))
        conv += [f"{b}.attn.c_attn", f"{b}.attn.c_proj", f"{b}.mlp.c_fc", f"{b}.mlp.c_proj"]
    head = "lm_head" if hasattr(root, "lm_head") else None
    return ArchMap(family="gpt2", model_type=model_type, kind="causal", hidden_size=cfg.n_embd,
                   max_positions=cfg.n_positions, blocks=tuple(blocks),
                   embeddings=(f"{p}wte", f"{p}wpe"), final_norm=f"{p}ln_f", head=head,
                   tied_head=bool(head and cfg.tie_word_embeddings), conv1d_transposed=tuple(conv),
                   norm=NormSpec("layer", eps=float(cfg.layer_norm_epsilon)))


def set_heads(mod, n_heads: int, n_kv_heads: int, head_dim: int) -> None:
    mod.num_heads, mod.head_dim, mod.split_size = n_heads, head_dim, n_heads * head_dim
    mod.scaling = (head_dim ** -0.5 if mod.scale_attn_weights else 1.0) / \
        (float(mod.layer_idx + 1) if mod.scale_attn_by_inverse_layer_idx else 1.0)


FAMILY = Family(
    name="gpt2", model_types=("gpt2",), adapter=adapter, set_heads=set_heads,
    config_keys=dict(heads="n_head", ffn="n_inner", layers="n_layer", hidden="n_embd"),
    describe="GPT-2 (gpt2)", gguf_sources=("gpt2",))
