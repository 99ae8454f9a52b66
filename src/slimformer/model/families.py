"""One adapter per supported family: it reads a loaded module and its config into an ArchMap.

The adapter is chosen by the config's model_type; a family is supported when an adapter
lists its model_type. Head counts and FFN widths are read per block from the modules (trimming
may leave different counts in different blocks), and checked against the real weights so that
a mismatch fails at load, not in the middle of a method. `ATTENTION_SETTERS` writes new head
counts into a family's attention module, and `CONFIG_KEYS` names the config fields a uniform
trim rewrites: the only family-specific knowledge trimming needs.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from ..errors import UnsupportedModelError
from .arch import ArchMap, AttentionMap, BlockMap, FFNMap, get_module

Adapter = Callable[[nn.Module, object, str], ArchMap]


def _prefix(root: nn.Module) -> str:
    base = getattr(root, "base_model", root)
    return "" if base is root else root.base_model_prefix + "."


def _bert(root: nn.Module, cfg, model_type: str) -> ArchMap:
    p = _prefix(root)
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
                              module=f"{b}.attention.self"),
            ffn=FFNMap(up=f"{b}.intermediate.dense", down=f"{b}.output.dense",
                       width=get_module(root, f"{b}.intermediate.dense").out_features),
            attn_norm=f"{b}.attention.output.LayerNorm", ffn_norm=f"{b}.output.LayerNorm",
            pre_norm=False))
    emb = [f"{p}embeddings.word_embeddings", f"{p}embeddings.position_embeddings"]
    if getattr(cfg, "type_vocab_size", 0):
        emb.append(f"{p}embeddings.token_type_embeddings")
    pooler = f"{p}pooler.dense" if getattr(get_module(root, p.rstrip(".")), "pooler", None) is not None else None
    return ArchMap(family="bert", model_type=model_type, kind="encoder",
                   hidden_size=cfg.hidden_size, max_positions=_bert_positions(cfg, model_type),
                   blocks=tuple(blocks), embeddings=tuple(emb), embedding_norm=f"{p}embeddings.LayerNorm",
                   pooler=pooler)


def _bert_positions(cfg, model_type: str) -> int:
    # RoBERTa-style position ids start after the padding index, which uses up pad_token_id + 1 slots.
    if model_type in ("roberta", "xlm-roberta", "camembert"):
        return cfg.max_position_embeddings - (cfg.pad_token_id or 0) - 1
    return cfg.max_position_embeddings


def _distilbert(root: nn.Module, cfg, model_type: str) -> ArchMap:
    p = _prefix(root)
    blocks = []
    for i in range(len(get_module(root, f"{p}transformer.layer"))):
        b = f"{p}transformer.layer.{i}"
        sa = get_module(root, f"{b}.attention")
        blocks.append(BlockMap(
            index=i, name=b,
            attn=AttentionMap(q=f"{b}.attention.q_lin", k=f"{b}.attention.k_lin",
                              v=f"{b}.attention.v_lin", o=f"{b}.attention.out_lin",
                              n_heads=sa.n_heads, n_kv_heads=sa.n_heads, head_dim=sa.attention_head_size,
                              module=f"{b}.attention"),
            ffn=FFNMap(up=f"{b}.ffn.lin1", down=f"{b}.ffn.lin2",
                       width=get_module(root, f"{b}.ffn.lin1").out_features),
            attn_norm=f"{b}.sa_layer_norm", ffn_norm=f"{b}.output_layer_norm", pre_norm=False))
    return ArchMap(family="distilbert", model_type=model_type, kind="encoder", hidden_size=cfg.dim,
                   max_positions=cfg.max_position_embeddings, blocks=tuple(blocks),
                   embeddings=(f"{p}embeddings.word_embeddings", f"{p}embeddings.position_embeddings"),
                   embedding_norm=f"{p}embeddings.LayerNorm")


def _gpt2(root: nn.Module, cfg, model_type: str) -> ArchMap:
    p = _prefix(root)
    blocks, conv = [], []
    for i in range(len(get_module(root, f"{p}h"))):
        b = f"{p}h.{i}"
        at = get_module(root, f"{b}.attn")
        blocks.append(BlockMap(
            index=i, name=b,
            attn=AttentionMap(qkv=f"{b}.attn.c_attn", o=f"{b}.attn.c_proj", n_heads=at.num_heads,
                              n_kv_heads=at.num_heads, head_dim=at.head_dim, module=f"{b}.attn"),
            ffn=FFNMap(up=f"{b}.mlp.c_fc", down=f"{b}.mlp.c_proj",
                       width=_out_features(get_module(root, f"{b}.mlp.c_fc"))),
            attn_norm=f"{b}.ln_1", ffn_norm=f"{b}.ln_2", pre_norm=True))
        conv += [f"{b}.attn.c_attn", f"{b}.attn.c_proj", f"{b}.mlp.c_fc", f"{b}.mlp.c_proj"]
    head = "lm_head" if hasattr(root, "lm_head") else None
    return ArchMap(family="gpt2", model_type=model_type, kind="causal", hidden_size=cfg.n_embd,
                   max_positions=cfg.n_positions, blocks=tuple(blocks),
                   embeddings=(f"{p}wte", f"{p}wpe"), final_norm=f"{p}ln_f", head=head,
                   tied_head=bool(head and cfg.tie_word_embeddings), conv1d_transposed=tuple(conv))


def _llama(root: nn.Module, cfg, model_type: str) -> ArchMap:
    p = _prefix(root)
    blocks = []
    for i in range(len(get_module(root, f"{p}layers"))):
        b = f"{p}layers.{i}"
        head_dim = get_module(root, f"{b}.self_attn").head_dim
        n_heads = _out_features(get_module(root, f"{b}.self_attn.q_proj")) // head_dim
        n_kv = _out_features(get_module(root, f"{b}.self_attn.k_proj")) // head_dim
        blocks.append(BlockMap(
            index=i, name=b,
            attn=AttentionMap(q=f"{b}.self_attn.q_proj", k=f"{b}.self_attn.k_proj",
                              v=f"{b}.self_attn.v_proj", o=f"{b}.self_attn.o_proj",
                              n_heads=n_heads, n_kv_heads=n_kv, head_dim=head_dim, module=f"{b}.self_attn"),
            ffn=FFNMap(gate=f"{b}.mlp.gate_proj", up=f"{b}.mlp.up_proj", down=f"{b}.mlp.down_proj",
                       width=_out_features(get_module(root, f"{b}.mlp.up_proj"))),
            attn_norm=f"{b}.input_layernorm", ffn_norm=f"{b}.post_attention_layernorm",
            pre_norm=True))
    head = "lm_head" if hasattr(root, "lm_head") else None
    return ArchMap(family="llama", model_type=model_type, kind="causal", hidden_size=cfg.hidden_size,
                   max_positions=cfg.max_position_embeddings, blocks=tuple(blocks),
                   embeddings=(f"{p}embed_tokens",), final_norm=f"{p}norm", head=head,
                   tied_head=bool(head and cfg.tie_word_embeddings))


def _out_features(mod: nn.Module) -> int:
    return getattr(mod, "out_features", None) or mod.weight.shape[0]


def _set_bert(mod, n_heads: int, n_kv_heads: int, head_dim: int) -> None:
    mod.num_attention_heads, mod.attention_head_size = n_heads, head_dim
    mod.all_head_size, mod.scaling = n_heads * head_dim, head_dim ** -0.5


def _set_distilbert(mod, n_heads: int, n_kv_heads: int, head_dim: int) -> None:
    mod.n_heads, mod.attention_head_size, mod.scaling = n_heads, head_dim, head_dim ** -0.5


def _set_gpt2(mod, n_heads: int, n_kv_heads: int, head_dim: int) -> None:
    mod.num_heads, mod.head_dim, mod.split_size = n_heads, head_dim, n_heads * head_dim
    mod.scaling = (head_dim ** -0.5 if mod.scale_attn_weights else 1.0) / \
        (float(mod.layer_idx + 1) if mod.scale_attn_by_inverse_layer_idx else 1.0)


def _set_llama(mod, n_heads: int, n_kv_heads: int, head_dim: int) -> None:
    mod.head_dim, mod.num_key_value_groups = head_dim, n_heads // n_kv_heads


# What a family's attention forward reads of its head counts, written by trimming.
ATTENTION_SETTERS = {"bert": _set_bert, "distilbert": _set_distilbert, "gpt2": _set_gpt2, "llama": _set_llama}

# Config fields a uniform trim rewrites, by family: heads, kv_heads, ffn, layers, hidden.
CONFIG_KEYS = {
    "bert": dict(heads="num_attention_heads", ffn="intermediate_size", layers="num_hidden_layers",
                 hidden="hidden_size"),
    "distilbert": dict(heads="n_heads", ffn="hidden_dim", layers="n_layers", hidden="dim"),
    "gpt2": dict(heads="n_head", ffn="n_inner", layers="n_layer", hidden="n_embd"),
    "llama": dict(heads="num_attention_heads", kv_heads="num_key_value_heads", ffn="intermediate_size",
                  layers="num_hidden_layers", hidden="hidden_size", head_dim="head_dim"),
}

ADAPTERS: dict[str, Adapter] = {
    "bert": _bert, "roberta": _bert, "xlm-roberta": _bert, "camembert": _bert,
    "distilbert": _distilbert,
    "gpt2": _gpt2,
    "llama": _llama, "mistral": _llama, "qwen2": _llama,
}
SUPPORTED = "BERT-family encoders (bert, roberta, xlm-roberta, camembert, distilbert; MiniLM is bert), " \
            "GPT-2 (gpt2), Llama-family decoders (llama, mistral, qwen2; SmolLM is llama)"
ENCODER_TYPES = {t for t, a in ADAPTERS.items() if a in (_bert, _distilbert)}


def check_supported(model_type: str | None) -> None:
    if model_type not in ADAPTERS:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported; supported families: {SUPPORTED}")


def build_arch_map(root: nn.Module) -> ArchMap:
    cfg = root.config
    check_supported(cfg.model_type)
    arch = ADAPTERS[cfg.model_type](root, cfg, cfg.model_type)
    _check_shapes(root, arch)
    return arch


def _check_shapes(root: nn.Module, arch: ArchMap) -> None:
    """Fail early if the config and the weights disagree (say, a hand-edited config)."""
    for blk in arch.blocks:
        a = blk.attn
        q_rows = a.n_heads * a.head_dim
        kv_rows = a.n_kv_heads * a.head_dim
        if a.fused:
            expected = {a.qkv: q_rows + 2 * kv_rows}
        else:
            expected = {a.q: q_rows, a.k: kv_rows, a.v: kv_rows}
        expected[blk.ffn.up] = blk.ffn.width
        if blk.ffn.gate:
            expected[blk.ffn.gate] = blk.ffn.width
        for name, rows in expected.items():
            mod = get_module(root, name)
            got = getattr(mod, "out_features", None) or mod.weight.shape[0]
            if got != rows:
                raise UnsupportedModelError(
                    f"{name} has {got} output rows but the config implies {rows}; "
                    "the config does not describe these weights (check config.json)")
