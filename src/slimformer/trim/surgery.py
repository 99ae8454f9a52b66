"""Structural surgery: remove attention heads, FFN neurons, whole blocks and hidden channels.

Each function takes the indices to KEEP, slices every weight that the structure touches so the
model stays consistent, rewrites the head counts the family's attention forward reads, and
rebuilds the ArchMap from the modules (so later stages see the new shapes). Pruning masks on the
sliced linears are sliced with them. Which indices to keep is the scorers' business (scores.py);
these functions only cut.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigValueError
from ..model import BlockMap, Model, get_module, set_module
from ..model.families import build_arch_map, family
from ..model.masks import MaskStore


def _plain(model: Model, name: str) -> nn.Linear:
    mod = get_module(model.module, name)
    if type(mod) is not nn.Linear:
        raise ConfigValueError(f"{name} is a {type(mod).__name__}, not a dense Linear; put trim before "
                               "prune / quantize stages in the recipe")
    return mod


def slice_linear(lin: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None,
                 update: tuple | None = None) -> nn.Linear:
    """A new Linear holding W[rows][:, cols] (and b[rows]), or `update` = (W', b') computed for the
    kept columns by reconstruct.py (b' None: keep the bias as it is)."""
    W = lin.weight.data
    if rows is not None:
        W = W[rows]
    if cols is not None:
        W = W[:, cols]
    b = lin.bias.data[rows] if (lin.bias is not None and rows is not None) else (
        lin.bias.data if lin.bias is not None else None)
    if update is not None:
        W = update[0]
        b = update[1] if update[1] is not None else b
    new = nn.Linear(W.shape[1], W.shape[0], bias=b is not None, device=W.device, dtype=W.dtype)
    with torch.no_grad():
        new.weight.copy_(W)
        if b is not None:
            new.bias.copy_(b)
    new.train(lin.training)
    return new


def _replace(model: Model, name: str, rows=None, cols=None, update=None) -> None:
    set_module(model.module, name, slice_linear(_plain(model, name), rows, cols, update))
    if name in model.masks:
        keep = model.masks[name]
        model.masks[name] = keep[rows if rows is not None else slice(None)][:, cols if cols is not None
                                                                            else slice(None)]


def refresh(model: Model) -> None:
    """Rebuild the ArchMap from the modules after a cut, and write the new counts into the config
    (exact when every block has the same counts; see model/shapes.py)."""
    from ..model.shapes import sync_config
    model.arch = build_arch_map(model.module)
    sync_config(model)
    model.arch = build_arch_map(model.module)
    model.path = None


def head_rows(heads, head_dim: int) -> torch.Tensor:
    """Row indices of the given heads in a [heads * head_dim, ...] projection."""
    heads = torch.as_tensor(heads, dtype=torch.long)
    return (heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)


def kv_groups_of(blk: BlockMap, q_heads) -> list[int]:
    """The KV head each query head reads (GQA: query heads are grouped contiguously)."""
    per = blk.attn.n_heads // blk.attn.n_kv_heads
    return [h // per for h in q_heads]


def trim_heads(model: Model, blk: BlockMap, keep: list[int], o_update: tuple | None = None) -> None:
    """Keep query heads `keep` of block `blk`; a KV head is kept while any of its query heads is.
    Every kept KV group must keep the same number of query heads (transformers repeats each KV
    head a fixed number of times)."""
    a = blk.attn
    keep = sorted(int(h) for h in keep)
    if not keep or len(set(keep)) != len(keep) or keep[0] < 0 or keep[-1] >= a.n_heads:
        raise ConfigValueError(f"{blk.name}: heads to keep must be distinct indices in [0, {a.n_heads}) "
                               f"and at least one (got {keep})")
    groups = kv_groups_of(blk, keep)
    kv_keep = sorted(set(groups))
    per_group = {g: groups.count(g) for g in kv_keep}
    if len(set(per_group.values())) != 1:
        raise ConfigValueError(f"{blk.name}: every kept KV group must keep the same number of query "
                               f"heads (got {per_group}); trim query heads evenly within groups")
    q_rows = head_rows(keep, a.head_dim)
    kv_rows = head_rows(kv_keep, a.head_dim)
    if a.fused:  # rows [q: heads * hd; k: kv * hd; v: kv * hd] (GPT-2: kv == heads; Phi-3: GQA)
        q_width, kv_width = a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim
        _replace(model, a.qkv, rows=torch.cat([q_rows, q_width + kv_rows, q_width + kv_width + kv_rows]))
    else:
        _replace(model, a.q, rows=q_rows)
        _replace(model, a.k, rows=kv_rows)
        _replace(model, a.v, rows=kv_rows)
    _replace(model, a.o, cols=q_rows, update=o_update)
    family(model.arch).set_heads(get_module(model.module, a.module), len(keep), len(kv_keep),
                                         a.head_dim)


def trim_ffn(model: Model, blk: BlockMap, keep, down_update: tuple | None = None) -> None:
    """Keep FFN neurons `keep`: rows of up (and gate), columns of down."""
    keep = torch.as_tensor(sorted(int(i) for i in keep), dtype=torch.long)
    if keep.numel() == 0:
        raise ConfigValueError(f"{blk.name}: an FFN must keep at least one neuron")
    # fused [gate; up] rows (Phi-3's gate_up_proj, ModernBERT's Wi): neuron j is rows j and width + j
    rows = torch.cat([keep, blk.ffn.width + keep]) if blk.ffn.fused_gate_up else keep
    for name in blk.ffn.inputs:
        _replace(model, name, rows=rows)
    _replace(model, blk.ffn.down, cols=keep, update=down_update)


def drop_blocks(model: Model, drop: list[int]) -> None:
    """Remove whole blocks; the rest are renumbered (KV-cache layer indices, mask names, config)."""
    n = model.arch.n_layers
    drop = sorted(set(int(i) for i in drop))
    if any(i < 0 or i >= n for i in drop) or len(drop) >= n:
        raise ConfigValueError(f"can drop between 0 and {n - 1} of {n} blocks (got {drop})")
    container_name = model.arch.blocks[0].name.rpartition(".")[0]
    container = get_module(model.module, container_name)
    kept = [i for i in range(n) if i not in drop]
    new_list = nn.ModuleList([container[i] for i in kept])
    set_module(model.module, container_name, new_list)
    renames = {}
    for new_i, old_i in enumerate(kept):
        for mod in new_list[new_i].modules():
            if hasattr(mod, "layer_idx"):
                mod.layer_idx = new_i
        renames[f"{container_name}.{old_i}."] = f"{container_name}.{new_i}."
    masks = MaskStore()
    for name, keep in model.masks.items():
        for old, new in renames.items():
            if name.startswith(old):
                masks[new + name[len(old):]] = keep
                break
        else:
            if not any(name.startswith(f"{container_name}.{i}.") for i in drop):
                masks[name] = keep
    model.masks = masks
    cfg = model.module.config
    if isinstance(getattr(cfg, "layer_types", None), list):  # per-layer attention kinds (Qwen2, Mistral)
        cfg.layer_types = [cfg.layer_types[i] for i in kept]


def _slice_norm(model: Model, name: str, keep: torch.Tensor) -> None:
    norm = get_module(model.module, name)
    with torch.no_grad():
        norm.weight = nn.Parameter(norm.weight.data[keep].clone())
        if getattr(norm, "bias", None) is not None:
            norm.bias = nn.Parameter(norm.bias.data[keep].clone())
    if hasattr(norm, "normalized_shape"):
        norm.normalized_shape = (keep.numel(),)


def trim_hidden(model: Model, keep) -> None:
    """Keep hidden (residual-stream) channels `keep` everywhere: embeddings, norms, every
    projection that reads or writes the residual stream, the pooler and the LM head."""
    arch = model.arch
    keep = torch.as_tensor(sorted(int(i) for i in keep), dtype=torch.long)
    if keep.numel() < 1 or keep[-1] >= arch.hidden_size:
        raise ConfigValueError(f"hidden channels to keep must be indices in [0, {arch.hidden_size})")
    for name in arch.embeddings:
        emb = get_module(model.module, name)
        emb.weight = nn.Parameter(emb.weight.data[:, keep].clone())
        emb.embedding_dim = keep.numel()
    block_norms = [n for b in arch.blocks for n in (b.attn_norm, b.ffn_norm, b.post_attn_norm, b.post_ffn_norm)]
    for name in [arch.embedding_norm, arch.final_norm] + block_norms:
        if name:
            _slice_norm(model, name, keep)
    for blk in arch.blocks:
        for name in blk.attn.inputs + blk.ffn.inputs:
            _replace(model, name, cols=keep)
        for name in (blk.attn.o, blk.ffn.down):
            _replace(model, name, rows=keep)
    if arch.pooler:
        _replace(model, arch.pooler, rows=keep, cols=keep)
    if arch.head:
        if arch.tied_head:
            head = get_module(model.module, arch.head)
            head.weight = get_module(model.module, arch.embeddings[0]).weight
            head.in_features = keep.numel()
        else:
            _replace(model, arch.head, cols=keep)
    refresh(model)
    _keep_embedding_scale(model, arch.embed_scale)


@torch.no_grad()
def _keep_embedding_scale(model: Model, old_scale: float) -> None:
    """Keep the scaled token embeddings exact when the family derives the scale from the hidden
    size (Gemma: sqrt(hidden), recomputed from config.hidden_size whenever the model is built).

    The refreshed ArchMap says what the new config implies (`new`); the embedding weights are
    multiplied by old / new so that weight * new equals what weight * old gave. A head tied to those
    weights would then see them scaled too, so the final norm, whose output only the head reads,
    takes the inverse: (offset + w') = (offset + w) * new / old."""
    arch = model.arch
    new_scale = arch.embed_scale
    if new_scale == old_scale:
        return
    emb = get_module(model.module, arch.embeddings[0])
    buf = getattr(emb, "embed_scale", None)
    if not torch.is_tensor(buf) or (arch.tied_head and not arch.final_norm):
        raise ConfigValueError(f"{arch.embeddings[0]}: the embedding scale follows the hidden size and this "
                               "model gives no way to keep it exact; trim heads, ffn or layers instead of hidden")
    r = old_scale / new_scale
    emb.weight.mul_(r)
    buf.fill_(new_scale)
    if hasattr(emb, "scalar_embed_scale"):  # transformers' weight init refills the buffer from it
        emb.scalar_embed_scale = new_scale
    if arch.tied_head:
        norm = get_module(model.module, arch.final_norm)
        off = arch.norm.offset
        norm.weight.copy_((off + norm.weight) / r - off)
        if getattr(norm, "bias", None) is not None:
            norm.bias.div_(r)


def trim_head_dims(model: Model, blk: BlockMap, qk_keep: torch.Tensor, vo_keep: torch.Tensor) -> None:
    """Keep `qk_keep[h]` of head h's query/key dimensions and `vo_keep[h]` of its value dimensions
    (both [heads, new_head_dim]). Query rows are scaled by sqrt(new / old) so that the attention
    logits, which the forward scales by new_head_dim^-0.5, keep their scale on the kept dimensions.
    This is what lets a BERT / GPT-2 with fewer hidden channels keep heads * head_dim == hidden."""
    a = blk.attn
    if a.q_norm or a.k_norm:
        raise ConfigValueError(f"{blk.name}: head dimensions cannot be cut under per-head q/k norms (an RMSNorm "
                               "over head_dim changes with fewer dimensions); trim heads, ffn or layers instead")
    if a.n_kv_heads != a.n_heads:
        raise ConfigValueError(f"{blk.name}: head dimensions are cut only in multi-head attention (this block "
                               "has GQA); trim heads, kv_heads, ffn or layers instead")
    new_dim = qk_keep.shape[1]
    if vo_keep.shape[1] != new_dim or qk_keep.shape[0] != a.n_heads:
        raise ConfigValueError(f"{blk.name}: head dimensions to keep must be [heads, new_head_dim] for q/k and v")
    offsets = (torch.arange(a.n_heads) * a.head_dim)[:, None]
    qk_rows, vo_rows = (qk_keep + offsets).reshape(-1), (vo_keep + offsets).reshape(-1)
    scale = (new_dim / a.head_dim) ** 0.5
    if a.fused:
        width = a.n_heads * a.head_dim
        _replace(model, a.qkv, rows=torch.cat([qk_rows, width + qk_rows, 2 * width + vo_rows]))
        lin = get_module(model.module, a.qkv)
        with torch.no_grad():
            lin.weight[: len(qk_rows)] *= scale
            if lin.bias is not None:
                lin.bias[: len(qk_rows)] *= scale
    else:
        _replace(model, a.q, rows=qk_rows)
        _replace(model, a.k, rows=qk_rows)
        _replace(model, a.v, rows=vo_rows)
        lin = get_module(model.module, a.q)
        with torch.no_grad():
            lin.weight.mul_(scale)
            if lin.bias is not None:
                lin.bias.mul_(scale)
    _replace(model, a.o, cols=vo_rows)
    family(model.arch).set_heads(get_module(model.module, a.module), a.n_heads, a.n_kv_heads, new_dim)
