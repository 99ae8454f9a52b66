"""ModernBERT encoders: pre-norm blocks with a fused Wqkv ([q; k; v] rows), a GLU in Wi ([input;
gate] rows, act(input) * gate: the fused gate/up layout), LayerNorms without bias by default,
rotary positions with one base for global and one for local layers, local layers attending
|q - k| <= local_attention / 2, an embedding norm that also stands as the first block's attention
norm (that block's attn_norm is an Identity) and a final norm."""
from __future__ import annotations

from ..arch import ArchMap, AttentionMap, BlockMap, FFNMap, NormSpec, get_module
from .base import Family, out_features, prefix, rope_spec


def adapter(root, cfg, model_type: str) -> ArchMap:
    p = prefix(root)
    blocks = []
    for i in range(len(get_module(root, f"{p}layers"))):
        b = f"{p}layers.{i}"
        attn = get_module(root, f"{b}.attn")
        head_dim = attn.head_dim
        n_heads = out_features(attn.Wqkv) // (3 * head_dim)  # the forward infers it from Wqkv's rows
        norm = get_module(root, f"{b}.attn_norm")
        blocks.append(BlockMap(
            index=i, name=b,
            attn=AttentionMap(qkv=f"{b}.attn.Wqkv", o=f"{b}.attn.Wo", n_heads=n_heads, n_kv_heads=n_heads,
                              head_dim=head_dim, module=f"{b}.attn", bias=attn.Wqkv.bias is not None),
            ffn=FFNMap(up=f"{b}.mlp.Wi", down=f"{b}.mlp.Wo", fused_gate_up=True,
                       width=out_features(get_module(root, f"{b}.mlp.Wi")) // 2, act=str(cfg.hidden_activation)),
            attn_norm=f"{b}.attn_norm" if getattr(norm, "weight", None) is not None else None,
            ffn_norm=f"{b}.mlp_norm", pre_norm=True,
            attention_type=get_module(root, b).attention_type))
    return ArchMap(family="modernbert", model_type=model_type, kind="encoder", hidden_size=cfg.hidden_size,
                   max_positions=cfg.max_position_embeddings, blocks=tuple(blocks),
                   embeddings=(f"{p}embeddings.tok_embeddings",), embedding_norm=f"{p}embeddings.norm",
                   final_norm=f"{p}final_norm",
                   norm=NormSpec("layer", eps=float(cfg.norm_eps), bias=bool(cfg.norm_bias)),
                   rope=rope_spec(cfg), sliding_window=int(cfg.sliding_window), bidirectional=True)


def set_heads(mod, n_heads: int, n_kv_heads: int, head_dim: int) -> None:
    mod.head_dim = head_dim  # the head count follows Wqkv's rows; logits scale by head_dim^-0.5


FAMILY = Family(
    name="modernbert", model_types=("modernbert",), adapter=adapter, set_heads=set_heads,
    config_keys=dict(heads="num_attention_heads", ffn="intermediate_size", layers="num_hidden_layers",
                     hidden="hidden_size"),
    describe="ModernBERT encoders (modernbert)", kind="encoder", onnx="encoder")
