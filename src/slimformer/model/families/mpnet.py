"""MPNet encoders (all-mpnet-base-v2): BERT-like post-norm blocks under other names, learned
positions counted RoBERTa-style after padding id 1, and a relative position bias: one table
[buckets, heads] in the encoder whose per-head values every block adds to its attention logits."""
from __future__ import annotations

from ..arch import ArchMap, AttentionMap, BlockMap, FFNMap, NormSpec, RelativeBias, get_module
from .base import Family, has, prefix

PADDING_IDX = 1  # MPNetEmbeddings fixes it (not config.pad_token_id): positions start at 2


def adapter(root, cfg, model_type: str) -> ArchMap:
    p = prefix(root)
    blocks = []
    for i in range(len(get_module(root, f"{p}encoder.layer"))):
        b = f"{p}encoder.layer.{i}"
        sa = get_module(root, f"{b}.attention.attn")
        blocks.append(BlockMap(
            index=i, name=b,
            attn=AttentionMap(q=f"{b}.attention.attn.q", k=f"{b}.attention.attn.k", v=f"{b}.attention.attn.v",
                              o=f"{b}.attention.attn.o", n_heads=sa.num_attention_heads,
                              n_kv_heads=sa.num_attention_heads, head_dim=sa.attention_head_size,
                              module=f"{b}.attention.attn", bias=sa.q.bias is not None),
            ffn=FFNMap(up=f"{b}.intermediate.dense", down=f"{b}.output.dense",
                       width=get_module(root, f"{b}.intermediate.dense").out_features, act=str(cfg.hidden_act)),
            attn_norm=f"{b}.attention.LayerNorm", ffn_norm=f"{b}.output.LayerNorm", pre_norm=False))
    offset = PADDING_IDX + 1
    # compute_position_bias is called with its defaults (32 buckets, distance 128), not the config's count
    rel = RelativeBias(table=f"{p}encoder.relative_attention_bias", buckets=32, max_distance=128, shared=True)
    return ArchMap(family="mpnet", model_type=model_type, kind="encoder", hidden_size=cfg.hidden_size,
                   max_positions=cfg.max_position_embeddings - offset, blocks=tuple(blocks),
                   embeddings=(f"{p}embeddings.word_embeddings", f"{p}embeddings.position_embeddings"),
                   embedding_norm=f"{p}embeddings.LayerNorm",
                   pooler=f"{p}pooler.dense" if has(root, f"{p}pooler.dense") else None,
                   norm=NormSpec("layer", eps=float(cfg.layer_norm_eps)), position_offset=offset,
                   relative_bias=rel, bidirectional=True)


def set_heads(mod, n_heads: int, n_kv_heads: int, head_dim: int) -> None:
    mod.num_attention_heads, mod.attention_head_size = n_heads, head_dim
    mod.all_head_size = n_heads * head_dim


FAMILY = Family(
    name="mpnet", model_types=("mpnet",), adapter=adapter, set_heads=set_heads,
    config_keys=dict(heads="num_attention_heads", ffn="intermediate_size", layers="num_hidden_layers",
                     hidden="hidden_size"),
    describe="MPNet encoders (mpnet; all-mpnet-base-v2)", kind="encoder", onnx="encoder")
