"""One adapter per supported family: it reads a loaded module and its config into an ArchMap.

The adapter is chosen by the config's model_type; a family is supported when an adapter
lists its model_type. Shapes come from the config (which trimming rewrites), and are checked
against the real weights so that a mismatch fails at load, not in the middle of a method.
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
    n_heads = cfg.num_attention_heads
    blocks = []
    for i in range(cfg.num_hidden_layers):
        b = f"{p}encoder.layer.{i}"
        head_dim = get_module(root, f"{b}.attention.self.query").out_features // n_heads
        blocks.append(BlockMap(
            index=i, name=b,
            attn=AttentionMap(q=f"{b}.attention.self.query", k=f"{b}.attention.self.key",
                              v=f"{b}.attention.self.value", o=f"{b}.attention.output.dense",
                              n_heads=n_heads, n_kv_heads=n_heads, head_dim=head_dim),
            ffn=FFNMap(up=f"{b}.intermediate.dense", down=f"{b}.output.dense",
                       width=get_module(root, f"{b}.intermediate.dense").out_features),
            attn_norm=f"{b}.attention.output.LayerNorm", ffn_norm=f"{b}.output.LayerNorm",
            pre_norm=False))
    emb = [f"{p}embeddings.word_embeddings", f"{p}embeddings.position_embeddings"]
    if getattr(cfg, "type_vocab_size", 0):
        emb.append(f"{p}embeddings.token_type_embeddings")
    return ArchMap(family="bert", model_type=model_type, kind="encoder",
                   hidden_size=cfg.hidden_size, max_positions=_bert_positions(cfg, model_type),
                   blocks=tuple(blocks), embeddings=tuple(emb))


def _bert_positions(cfg, model_type: str) -> int:
    # RoBERTa-style position ids start after the padding index, which uses up pad_token_id + 1 slots.
    if model_type in ("roberta", "xlm-roberta", "camembert"):
        return cfg.max_position_embeddings - (cfg.pad_token_id or 0) - 1
    return cfg.max_position_embeddings


def _distilbert(root: nn.Module, cfg, model_type: str) -> ArchMap:
    p = _prefix(root)
    blocks = []
    for i in range(cfg.n_layers):
        b = f"{p}transformer.layer.{i}"
        head_dim = get_module(root, f"{b}.attention.q_lin").out_features // cfg.n_heads
        blocks.append(BlockMap(
            index=i, name=b,
            attn=AttentionMap(q=f"{b}.attention.q_lin", k=f"{b}.attention.k_lin",
                              v=f"{b}.attention.v_lin", o=f"{b}.attention.out_lin",
                              n_heads=cfg.n_heads, n_kv_heads=cfg.n_heads, head_dim=head_dim),
            ffn=FFNMap(up=f"{b}.ffn.lin1", down=f"{b}.ffn.lin2",
                       width=get_module(root, f"{b}.ffn.lin1").out_features),
            attn_norm=f"{b}.sa_layer_norm", ffn_norm=f"{b}.output_layer_norm", pre_norm=False))
    return ArchMap(family="distilbert", model_type=model_type, kind="encoder", hidden_size=cfg.dim,
                   max_positions=cfg.max_position_embeddings, blocks=tuple(blocks),
                   embeddings=(f"{p}embeddings.word_embeddings", f"{p}embeddings.position_embeddings"))


def _gpt2(root: nn.Module, cfg, model_type: str) -> ArchMap:
    p = _prefix(root)
    blocks, conv = [], []
    for i in range(cfg.n_layer):
        b = f"{p}h.{i}"
        blocks.append(BlockMap(
            index=i, name=b,
            attn=AttentionMap(qkv=f"{b}.attn.c_attn", o=f"{b}.attn.c_proj", n_heads=cfg.n_head,
                              n_kv_heads=cfg.n_head, head_dim=cfg.n_embd // cfg.n_head),
            ffn=FFNMap(up=f"{b}.mlp.c_fc", down=f"{b}.mlp.c_proj",
                       width=cfg.n_inner or 4 * cfg.n_embd),
            attn_norm=f"{b}.ln_1", ffn_norm=f"{b}.ln_2", pre_norm=True))
        conv += [f"{b}.attn.c_attn", f"{b}.attn.c_proj", f"{b}.mlp.c_fc", f"{b}.mlp.c_proj"]
    head = "lm_head" if hasattr(root, "lm_head") else None
    return ArchMap(family="gpt2", model_type=model_type, kind="causal", hidden_size=cfg.n_embd,
                   max_positions=cfg.n_positions, blocks=tuple(blocks),
                   embeddings=(f"{p}wte", f"{p}wpe"), final_norm=f"{p}ln_f", head=head,
                   tied_head=bool(head and cfg.tie_word_embeddings), conv1d_transposed=tuple(conv))


def _llama(root: nn.Module, cfg, model_type: str) -> ArchMap:
    p = _prefix(root)
    n_heads = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    blocks = []
    for i in range(cfg.num_hidden_layers):
        b = f"{p}layers.{i}"
        blocks.append(BlockMap(
            index=i, name=b,
            attn=AttentionMap(q=f"{b}.self_attn.q_proj", k=f"{b}.self_attn.k_proj",
                              v=f"{b}.self_attn.v_proj", o=f"{b}.self_attn.o_proj",
                              n_heads=n_heads, n_kv_heads=n_kv, head_dim=head_dim),
            ffn=FFNMap(gate=f"{b}.mlp.gate_proj", up=f"{b}.mlp.up_proj", down=f"{b}.mlp.down_proj",
                       width=cfg.intermediate_size),
            attn_norm=f"{b}.input_layernorm", ffn_norm=f"{b}.post_attention_layernorm",
            pre_norm=True))
    head = "lm_head" if hasattr(root, "lm_head") else None
    return ArchMap(family="llama", model_type=model_type, kind="causal", hidden_size=cfg.hidden_size,
                   max_positions=cfg.max_position_embeddings, blocks=tuple(blocks),
                   embeddings=(f"{p}embed_tokens",), final_norm=f"{p}norm", head=head,
                   tied_head=bool(head and cfg.tie_word_embeddings))


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
