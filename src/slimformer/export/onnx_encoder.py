"""Encoders as one ONNX graph, written from the ArchMap's facts (no model type is read here).

Block by block, with each block's own head count and widths (trimming may leave them unequal):
post-norm (BERT, DistilBERT, MPNet) or pre-norm (ModernBERT) residuals, separate or fused q/k/v
([q; k; v] rows), plain or gated FFNs (separate gate, or [gate; up] rows in one linear), LayerNorms
with or without bias, and the position schemes the families use:
- learned absolute positions, counted after the padding index where position_offset says so;
- rotary: cos / sin tables from the model's own rotary module, one pair per attention type
  (ModernBERT's global and local bases), sliced to the sequence length;
- a relative position bias (MPNet): the bucket of every distance k - q up to max_positions is a
  constant table computed at export with the T5-style formula in torch (the same float32 ops as
  transformers', so no bucket differs), the per-head values are gathered in the graph;
- sliding (local) attention of bidirectional stacks: keys with |q - k| > window masked in the graph.
RMSNorms x / sqrt(mean(x^2) + eps) * (offset + w) where NormSpec says so (Gemma: offset 1), per-head
q / k norms over head_dim, sandwich norms on the sub-layer outputs, GQA (each KV head expanded to
its query heads), an embedding scale and a logit scale other than head_dim^-0.5 (the bidirectional
Gemma 3 encoders) are written from the same facts.
"""
from __future__ import annotations

import inspect
import math

import numpy as np
import torch

from ..errors import UnsupportedModelError
from ..model import Model
from ..model.arch import RelativeBias, get_module
from .onnx_graph import Graph, linear

I64 = np.int64
ACTIVATIONS = {"gelu": ("Gelu", "none"), "gelu_new": ("Gelu", "tanh"), "gelu_pytorch_tanh": ("Gelu", "tanh"),
               "relu": ("Relu", None), "silu": ("silu", None), "swish": ("silu", None)}


def check_encoder(model: Model) -> None:
    from ..model.families import exports_for
    arch = model.arch
    others = " or ".join(f for f in exports_for(arch) if f != "onnx")
    for blk in arch.blocks:
        if blk.ffn.act not in ACTIVATIONS:
            raise UnsupportedModelError(f"activation {blk.ffn.act!r} has no ONNX form here (supported: "
                                        f"{', '.join(ACTIVATIONS)}); export as {others}")
        if blk.attn.n_heads % blk.attn.n_kv_heads:
            raise UnsupportedModelError(f"{blk.name}: {blk.attn.n_heads} query heads do not share "
                                        f"{blk.attn.n_kv_heads} KV heads evenly; export as {others}")
    if arch.norm.kind not in ("layer", "rms"):
        raise UnsupportedModelError(f"the encoder ONNX graph writes LayerNorm and RMSNorm, not {arch.norm.kind} "
                                    f"norms; export as {others}")
    if arch.attn_softcap:
        raise UnsupportedModelError(f"the encoder ONNX graph does not write attention logit soft-capping; "
                                    f"export as {others}")
    if arch.relative_bias is not None:
        cols = get_module(model.module, arch.relative_bias.table).weight.shape[1]
        if any(b.attn.n_heads != cols for b in arch.blocks):
            raise UnsupportedModelError(f"the relative position bias holds {cols} heads but a block has fewer; "
                                        f"export as {others}")
    if arch.rope is not None and arch.rope.partial != 1.0:
        raise UnsupportedModelError(f"the encoder ONNX graph does not write partial rotary; export as {others}")


def relative_buckets(distance: torch.Tensor, spec: RelativeBias) -> torch.Tensor:
    """Bucket of each key - query distance, bidirectional T5 style (MPNet's relative_position_bucket):
    half the buckets per sign, distances below a quarter of the buckets exact, then logarithmic
    up to max_distance, the last bucket beyond."""
    half = spec.buckets // 2
    n = -distance
    ret = (n < 0).to(torch.long) * half
    n = torch.abs(n)
    exact = half // 2
    large = exact + (torch.log(n.float() / exact) / math.log(spec.max_distance / exact)
                     * (half - exact)).to(torch.long)
    large = torch.min(large, torch.full_like(large, half - 1))
    return ret + torch.where(n < exact, n, large)


def _ints(g: Graph, values) -> str:
    return g.const(np.array(values), dtype=I64)


def layer_norm(g: Graph, x: str, model: Model, name: str | None) -> str:
    """The family's norm (NormSpec) named `name` applied over the last axis of x."""
    if name is None:  # a block without its own norm (ModernBERT's first): the input as is
        return x
    ln = get_module(model.module, name)
    spec = model.arch.norm
    eps = float(getattr(ln, "eps", getattr(ln, "variance_epsilon", spec.eps)))
    if spec.kind == "rms":  # x / sqrt(mean(x^2) + eps) * (offset + w), in float32 as transformers computes
        ms = g.op("ReduceMean", [g.op("Mul", [x, x]), _ints(g, [-1])], keepdims=1)
        y = g.op("Div", [x, g.op("Sqrt", [g.op("Add", [ms, g.const(np.float32(eps))])])])
        w = ln.weight.detach().float() + spec.offset
        return g.op("Mul", [y, g.const(w, f"{name}.weight_plus_offset" if spec.offset else f"{name}.weight")])
    inputs = [x, g.const(ln.weight, f"{name}.weight")]
    if getattr(ln, "bias", None) is not None:
        inputs.append(g.const(ln.bias, f"{name}.bias"))
    return g.op("LayerNormalization", inputs, axis=-1, epsilon=eps)


def _activation(g: Graph, h: str, act: str) -> str:
    op, approx = ACTIVATIONS[act]
    if op == "silu":
        return g.op("Mul", [h, g.op("Sigmoid", [h])])
    if op == "Gelu":
        return g.op("Gelu", [h], approximate=approx)
    return g.op(op, [h])


def _embeddings(g: Graph, model: Model, ids: str, seq: str) -> str:
    root, arch = model.module, model.arch
    word = get_module(root, arch.embeddings[0]).weight
    x = g.op("Gather", [g.const(word, f"{arch.embeddings[0]}.weight"), ids], axis=0)
    if arch.embed_scale != 1.0:
        x = g.op("Mul", [x, g.const(np.float32(arch.embed_scale))])
    if len(arch.embeddings) > 1:  # learned absolute positions
        pos_table = g.const(get_module(root, arch.embeddings[1]).weight, f"{arch.embeddings[1]}.weight")
        if arch.position_offset:  # RoBERTa, MPNet: ids after the padding index, counted over real tokens
            pad = g.const(np.int64(arch.position_offset - 1), dtype=I64)
            real = g.op("Cast", [g.op("Not", [g.op("Equal", [ids, pad])])], to=7)
            positions = g.op("Add", [g.op("Mul", [g.op("CumSum", [real, g.const(np.int64(1), dtype=I64)]), real]), pad])
        else:  # 0 .. S-1: the first S entries of a position-id table, as transformers' own graphs do
            table = g.const(np.arange(arch.max_positions)[None, :], "position_ids", dtype=I64)
            positions = g.op("Slice", [table, _ints(g, [0]), seq, _ints(g, [1])])
        x = g.op("Add", [x, g.op("Gather", [pos_table, positions], axis=0)])
    if len(arch.embeddings) > 2:  # token type 0 for every token
        types = get_module(root, arch.embeddings[2]).weight[0]
        x = g.op("Add", [x, g.const(types, f"{arch.embeddings[2]}.row0")])
    return layer_norm(g, x, model, arch.embedding_norm)


def _rotary_tables(model: Model) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """attention type -> cos, sin [positions, head_dim] from the model's rotary module (rotary_emb,
    transformers' name in every rotary model), which applies any scaling the config asks for."""
    base = getattr(model.module, "base_model", model.module)
    rotary = getattr(base, "rotary_emb", None)
    if rotary is None:
        raise UnsupportedModelError(f"{model.arch.model_type}: rotary positions without a rotary_emb module; "
                                    "export as hf")
    positions = torch.arange(model.arch.max_positions)[None]
    probe = torch.zeros(1, 1, dtype=torch.float32)
    typed = "layer_type" in inspect.signature(rotary.forward).parameters
    tables = {}
    with torch.no_grad():
        for kind in {b.attention_type for b in model.arch.blocks}:
            cos, sin = rotary(probe, positions, layer_type=kind) if typed else rotary(probe, positions)
            tables[kind] = (cos[0].float(), sin[0].float())
    return tables


def _rotate(g: Graph, t: str, cos: str, sin: str, half: int) -> str:
    """t * cos + rotate_half(t) * sin, rotate_half(t) = [-t2, t1] along the head dimension."""
    axis = _ints(g, [-1])
    t1 = g.op("Slice", [t, _ints(g, [0]), _ints(g, [half]), axis])
    t2 = g.op("Slice", [t, _ints(g, [half]), _ints(g, [2 * half]), axis])
    rot = g.op("Concat", [g.op("Neg", [t2]), t1], axis=-1)
    return g.op("Add", [g.op("Mul", [t, cos]), g.op("Mul", [rot, sin])])


def _distances(g: Graph, seq: str) -> str:
    """[S, S] int64: key index minus query index."""
    s = g.op("Squeeze", [seq, _ints(g, [0])])
    idx = g.op("Range", [g.const(np.int64(0), dtype=I64), s, g.const(np.int64(1), dtype=I64)])
    return g.op("Sub", [g.op("Unsqueeze", [idx, _ints(g, [0])]), g.op("Unsqueeze", [idx, _ints(g, [1])])])


def _relative_bias(g: Graph, model: Model, distance: str) -> str:
    """[1, heads, S, S]: the shared table's per-head value at each distance's bucket."""
    spec, P = model.arch.relative_bias, model.arch.max_positions
    buckets = relative_buckets(torch.arange(-(P - 1), P), spec)  # index: distance + P - 1
    idx = g.op("Add", [distance, g.const(np.int64(P - 1), dtype=I64)])
    b = g.op("Gather", [g.const(buckets.numpy(), "relative_buckets", dtype=I64), idx], axis=0)
    table = get_module(model.module, spec.table).weight
    vals = g.op("Gather", [g.const(table, f"{spec.table}.weight"), b], axis=0)  # [S, S, H]
    return g.op("Unsqueeze", [g.op("Transpose", [vals], perm=[2, 0, 1]), _ints(g, [0])])


def _qkv(g: Graph, root, a, h: str) -> tuple[str, str, str]:
    if a.fused:
        rows = a.n_heads * a.head_dim
        return tuple(g.op("Split", [linear(g, h, get_module(root, a.qkv), a.qkv),
                                    _ints(g, [rows, a.n_kv_heads * a.head_dim, a.n_kv_heads * a.head_dim])],
                          n_out=3, axis=-1))
    return tuple(linear(g, h, get_module(root, n), n) for n in (a.q, a.k, a.v))


def _ffn(g: Graph, root, ffn, h: str) -> str:
    if ffn.fused_gate_up:  # [gate; up] rows: act(first half) * second half
        both = linear(g, h, get_module(root, ffn.up), ffn.up)
        gate, up = g.op("Split", [both, _ints(g, [ffn.width, ffn.width])], n_out=2, axis=-1)
        inner = g.op("Mul", [_activation(g, gate, ffn.act), up])
    elif ffn.gate:
        gate = linear(g, h, get_module(root, ffn.gate), ffn.gate)
        inner = g.op("Mul", [_activation(g, gate, ffn.act), linear(g, h, get_module(root, ffn.up), ffn.up)])
    else:
        inner = _activation(g, linear(g, h, get_module(root, ffn.up), ffn.up), ffn.act)
    return linear(g, inner, get_module(root, ffn.down), ffn.down)


def encoder_states(g: Graph, model: Model, ids: str, maskf: str) -> str:
    """The last hidden state [B, S, hidden] of the encoder, written into g."""
    root, arch = model.module, model.arch
    seq = g.op("Slice", [g.op("Shape", [ids]), _ints(g, [1]), _ints(g, [2])])
    x = _embeddings(g, model, ids, seq)
    lowest = g.const(np.float32(np.finfo(np.float32).min))
    pad = g.op("Mul", [g.op("Sub", [g.const(np.float32(1)), maskf]), lowest])
    pad = g.op("Unsqueeze", [pad, _ints(g, [1, 2])])  # [B, 1, 1, S]
    kinds = {b.attention_type for b in arch.blocks}
    distance = _distances(g, seq) if arch.relative_bias or "sliding_attention" in kinds else None
    masks = {k: pad for k in kinds}
    if "sliding_attention" in kinds:  # bidirectional window: |q - k| <= window
        far = g.op("Greater", [g.op("Abs", [distance]), g.const(np.int64(arch.sliding_window), dtype=I64)])
        window = g.op("Where", [far, lowest, g.const(np.float32(0))])  # [S, S]
        masks["sliding_attention"] = g.op("Min", [window, pad])  # Min: two lowest values would overflow
    if arch.relative_bias:
        rel = _relative_bias(g, model, distance)
        masks = {k: g.op("Add", [m, rel]) for k, m in masks.items()}
    rope = {}
    if arch.rope is not None:
        zero = _ints(g, [0])
        for kind, (cos, sin) in _rotary_tables(model).items():
            rope[kind] = tuple(g.op("Slice", [g.const(t, f"rotary_{name}_{kind}"), zero, seq, zero])
                               for name, t in (("cos", cos), ("sin", sin)))
    for blk in arch.blocks:
        a = blk.attn
        h = layer_norm(g, x, model, blk.attn_norm) if blk.pre_norm else x
        q, k, v = _qkv(g, root, a, h)
        q = g.op("Transpose", [g.op("Reshape", [q, _ints(g, [0, 0, a.n_heads, a.head_dim])])], perm=[0, 2, 1, 3])
        k, v = (g.op("Transpose", [g.op("Reshape", [t, _ints(g, [0, 0, a.n_kv_heads, a.head_dim])])], perm=[0, 2, 1, 3])
                for t in (k, v))
        if a.q_norm:  # per-head norms over head_dim, before the rotation
            q = layer_norm(g, q, model, a.q_norm)
        if a.k_norm:
            k = layer_norm(g, k, model, a.k_norm)
        if rope:
            cos, sin = rope[blk.attention_type]
            q, k = _rotate(g, q, cos, sin, a.head_dim // 2), _rotate(g, k, cos, sin, a.head_dim // 2)
        if a.n_kv_heads != a.n_heads:  # GQA: KV head j serves query heads j * per .. (j + 1) * per - 1
            k, v = (_repeat_kv(g, t, a.n_kv_heads, a.n_heads // a.n_kv_heads, a.head_dim) for t in (k, v))
        scale = arch.attn_scale if arch.attn_scale is not None else a.head_dim ** -0.5
        scores = g.op("Mul", [g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])]),
                              g.const(np.float32(scale))])
        probs = g.op("Softmax", [g.op("Add", [scores, masks[blk.attention_type]])], axis=-1)
        ctx = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, _ints(g, [0, 0, a.n_heads * a.head_dim])])
        attn = linear(g, ctx, get_module(root, a.o), a.o)
        if blk.post_attn_norm:  # sandwich norm on the sub-layer's output, before the residual
            attn = layer_norm(g, attn, model, blk.post_attn_norm)
        x = g.op("Add", [attn, x])
        if blk.pre_norm:
            ffn = _ffn(g, root, blk.ffn, layer_norm(g, x, model, blk.ffn_norm))
            if blk.post_ffn_norm:
                ffn = layer_norm(g, ffn, model, blk.post_ffn_norm)
            x = g.op("Add", [x, ffn])
        else:
            x = layer_norm(g, x, model, blk.attn_norm)
            x = layer_norm(g, g.op("Add", [_ffn(g, root, blk.ffn, x), x]), model, blk.ffn_norm)
    return layer_norm(g, x, model, arch.final_norm) if arch.final_norm else x


def _repeat_kv(g: Graph, t: str, n_kv: int, per: int, head_dim: int) -> str:
    """[B, kv, S, d] -> [B, kv * per, S, d], each KV head repeated for its `per` query heads."""
    shape = g.op("Shape", [t])
    b_s = g.op("Gather", [shape, _ints(g, [0, 2])], axis=0)  # B, S
    b, s = g.op("Slice", [b_s, _ints(g, [0]), _ints(g, [1])]), g.op("Slice", [b_s, _ints(g, [1]), _ints(g, [2])])
    big = g.op("Concat", [b, _ints(g, [n_kv, per]), s, _ints(g, [head_dim])], axis=0)
    t = g.op("Expand", [g.op("Unsqueeze", [t, _ints(g, [2])]), big])
    return g.op("Reshape", [t, g.op("Concat", [b, _ints(g, [n_kv * per]), s, _ints(g, [head_dim])], axis=0)])
