"""`slimformer info`: the shape of a model, and where its parameters are."""
from __future__ import annotations

from dataclasses import dataclass

from ..results import _Serialisable
from .arch import get_module
from .model import Model


@dataclass
class ModelInfo(_Serialisable):
    model: str
    family: str
    model_type: str
    kind: str
    layers: int
    hidden_size: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn_width: int
    ffn_gated: bool
    vocab_size: int
    max_positions: int
    params: dict  # embeddings / attention / ffn / other / total (tied weights counted once)
    dtype: str
    size_on_disk_bytes: int | None
    uniform: bool  # every block has the same shapes


def tensor_key(t) -> int:
    """What identifies a tensor's storage: its address, or for a tensor on the meta device (a
    lazily loaded block on disk, where every address is 0) the tensor object."""
    return id(t) if t.device.type == "meta" else t.data_ptr()


def stored_weights(module) -> int:
    """Weights a quantized linear stands for (its codes are buffers, not parameters)."""
    return sum(m.in_features * m.out_features + (m.out_features if m.bias is not None else 0)
               for m in module.modules() if hasattr(m, "qweight"))


def unique_tensors(model: Model, buffers: bool = False):
    seen = set()
    items = list(model.module.parameters()) + (list(model.module.buffers()) if buffers else [])
    for t in items:
        if tensor_key(t) in seen:  # tied weights count once
            continue
        seen.add(tensor_key(t))
        yield t


def param_count(model: Model) -> int:
    """Weights of the model, quantized ones included (as the number of values they stand for)."""
    if model.runtime != "torch":
        return model.module.param_count()
    return sum(t.numel() for t in unique_tensors(model)) + stored_weights(model.module)


def _count(model: Model, names) -> tuple[int, set]:
    total, seen = 0, set()
    for name in names:
        mod = get_module(model.module, name)
        total += stored_weights(mod)
        for p in mod.parameters():
            if tensor_key(p) not in seen:
                seen.add(tensor_key(p))
                total += p.numel()
    return total, seen


def model_info(model: Model) -> ModelInfo:
    arch = model.arch
    emb, seen_e = _count(model, arch.embeddings)
    attn, seen_a = _count(model, [n for b in arch.blocks for n in b.attn.linears])
    ffn, seen_f = _count(model, [n for b in arch.blocks for n in b.ffn.linears])
    seen = seen_e | seen_a | seen_f
    other = sum(p.numel() for p in model.module.parameters() if tensor_key(p) not in seen)
    if arch.head is not None:  # a quantized LM head
        other += stored_weights(get_module(model.module, arch.head))
    b0 = arch.blocks[0]
    shapes = {(b.attn.n_heads, b.attn.n_kv_heads, b.attn.head_dim, b.ffn.width) for b in arch.blocks}
    p0 = next(model.module.parameters())
    return ModelInfo(
        model=model.name, family=arch.family, model_type=arch.model_type, kind=arch.kind,
        layers=arch.n_layers, hidden_size=arch.hidden_size, heads=b0.attn.n_heads,
        kv_heads=b0.attn.n_kv_heads, head_dim=b0.attn.head_dim, ffn_width=b0.ffn.width,
        ffn_gated=b0.ffn.gated, vocab_size=get_module(model.module, arch.embeddings[0]).weight.shape[0],
        max_positions=arch.max_positions,
        params={"embeddings": emb, "attention": attn, "ffn": ffn, "other": other,
                "total": emb + attn + ffn + other},
        dtype=str(p0.dtype).replace("torch.", ""), size_on_disk_bytes=model.source_bytes,
        uniform=len(shapes) == 1)
