"""DistilBERT: BERT's blocks under other module names, no token types."""
from __future__ import annotations

from ..arch import ArchMap, AttentionMap, BlockMap, FFNMap, NormSpec, get_module
from .base import Family, prefix


def adapter(root, cfg, model_type: str) -> ArchMap:
    p = prefix(root)
    blocks = []
    for i in range(len(get_module(root, f"{p}transformer.layer"))):
        b = f"{p}transformer.layer.{i}"
        sa = get_module(root, f"{b}.attention")
        blocks.append(BlockMap(
            index=i, name=b,
            attn=AttentionMap(q=f"{b}.attention.q_lin", k=f"{b}.attention.k_lin",
                              v=f"{b}.attention.v_lin", o=f"{b}.attention.out_lin",
                              n_heads=sa.n_heads, n_kv_heads=sa.n_heads, head_dim=sa.attention_head_size,
                              module=f"{b}.attention", bias=True),
            ffn=FFNMap(up=f"{b}.ffn.lin1", down=f"{b}.ffn.lin2",
                       width=get_module(root, f"{b}.ffn.lin1").out_features, act=str(cfg.activation)),
            attn_norm=f"{b}.sa_layer_norm", ffn_norm=f"{b}.output_layer_norm", pre_norm=False))
    return ArchMap(family="distilbert", model_type=model_type, kind="encoder", hidden_size=cfg.dim,
                   max_positions=cfg.max_position_embeddings, blocks=tuple(blocks),
                   embeddings=(f"{p}embeddings.word_embeddings", f"{p}embeddings.position_embeddings"),
                   embedding_norm=f"{p}embeddings.LayerNorm", norm=NormSpec("layer", eps=1e-12))


def set_heads(mod, n_heads: int, n_kv_heads: int, head_dim: int) -> None:
    mod.n_heads, mod.attention_head_size, mod.scaling = n_heads, head_dim, head_dim ** -0.5


FAMILY = Family(
    name="distilbert", model_types=("distilbert",), adapter=adapter, set_heads=set_heads,
    config_keys=dict(heads="n_heads", ffn="hidden_dim", layers="n_layers", hidden="dim"),
    describe="DistilBERT encoders (distilbert)", kind="encoder", onnx="encoder")
