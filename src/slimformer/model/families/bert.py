"""BERT-family encoders: bert (MiniLM), roberta, xlm-roberta, camembert; post-norm blocks."""
from __future__ import annotations

from ..arch import ArchMap, AttentionMap, BlockMap, FFNMap, NormSpec, get_module
from .base import Family, prefix

ROBERTA_LIKE = ("roberta", "xlm-roberta", "camembert")


def adapter(root, cfg, model_type: str) -> ArchMap:
    p = prefix(root)
    blocks = []
    for i in range(len(get_module(root, f"{p}encoder.layer"))):
        b = f"{p}encoder.layer.{i}"
        sa = get_module(root, f"{b}.attention.self")
        n_heads, head_dim = sa.num_attention_heads, sa.attention_head_size
        blocks.append(BlockMap(
            index=i, name=b,
            attn=AttentionMap(q=f"{b}.attention.self.query", k=f"{b}.attention.self.key",
                              v=f"{b}.attention.self.value", o=f"{b}.attention.output.dense",
                              n_heads=n_heads, n_kv_heads=n_heads, head_dim=head_dim,
                              module=f"{b}.attention.self", bias=True),
            ffn=FFNMap(up=f"{b}.intermediate.dense", down=f"{b}.output.dense",
                       width=get_module(root, f"{b}.intermediate.dense").out_features,
                       act=str(getattr(cfg, "hidden_act", "gelu"))),
            attn_norm=f"{b}.attention.output.LayerNorm", ffn_norm=f"{b}.output.LayerNorm",
            pre_norm=False))
    emb = [f"{p}embeddings.word_embeddings", f"{p}embeddings.position_embeddings"]
    if getattr(cfg, "type_vocab_size", 0):
        emb.append(f"{p}embeddings.token_type_embeddings")
    pooler = f"{p}pooler.dense" if getattr(get_module(root, p.rstrip(".")), "pooler", None) is not None else None
    # RoBERTa-style position ids start after the padding index, which uses up pad_token_id + 1 slots.
    offset = (cfg.pad_token_id or 0) + 1 if model_type in ROBERTA_LIKE else 0
    return ArchMap(family="bert", model_type=model_type, kind="encoder",
                   hidden_size=cfg.hidden_size, max_positions=cfg.max_position_embeddings - offset,
                   blocks=tuple(blocks), embeddings=tuple(emb), embedding_norm=f"{p}embeddings.LayerNorm",
                   pooler=pooler, norm=NormSpec("layer", eps=float(cfg.layer_norm_eps)),
                   position_offset=offset)


def set_heads(mod, n_heads: int, n_kv_heads: int, head_dim: int) -> None:
    mod.num_attention_heads, mod.attention_head_size = n_heads, head_dim
    mod.all_head_size, mod.scaling = n_heads * head_dim, head_dim ** -0.5


FAMILY = Family(
    name="bert", model_types=("bert",) + ROBERTA_LIKE, adapter=adapter, set_heads=set_heads,
    config_keys=dict(heads="num_attention_heads", ffn="intermediate_size", layers="num_hidden_layers",
                     hidden="hidden_size"),
    describe="BERT-family encoders (bert, roberta, xlm-roberta, camembert; MiniLM is bert)",
    kind="encoder", onnx="encoder")
