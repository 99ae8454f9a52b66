"""Llama-family decoders (llama, mistral, qwen2) as one ONNX forward graph, for scoring.

Inputs `input_ids` and `attention_mask` [batch, sequence] give `logits` [batch, sequence, vocab]
for every position, as a transformers forward without a cache does: what perplexity, fidelity and
prefill need. There is no KV cache in the graph (serve decoding from the GGUF export in
llama.cpp). Rotary tables come from the model's own rotary module (so any rope scaling it applies
is in them), causal and padding masks are built in the graph, GQA shares each KV head with its
group of query heads, and a tied LM head reads the embedding matrix in place (Gemm, transB).
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import UnsupportedModelError
from ..model import Model
from ..model.arch import get_module
from .onnx_graph import Graph, linear

I64 = np.int64


def check_decoder(model: Model) -> None:
    from ..model.families import exports_for
    arch = model.arch
    others = " or ".join(f for f in exports_for(arch) if f != "onnx")
    window = arch.sliding_window
    if window is not None and window < arch.max_positions:
        raise UnsupportedModelError(f"sliding-window attention is not written into the ONNX graph; export as {others}")
    for what, present in (("per-head q/k norms", any(b.attn.q_norm or b.attn.k_norm for b in arch.blocks)),
                          ("sandwich norms", any(b.post_attn_norm or b.post_ffn_norm for b in arch.blocks)),
                          ("a fused gate/up projection", any(b.ffn.fused_gate_up for b in arch.blocks)),
                          ("a scaled embedding", arch.embed_scale != 1.0),
                          (f"norm offset {arch.norm.offset}", arch.norm.offset != 0.0),
                          ("partial rotary", arch.rope is not None and arch.rope.partial != 1.0)):
        if present:
            raise UnsupportedModelError(f"the decoder ONNX graph does not write {what} ({arch.model_type}); "
                                        f"export as {others}")


def _rotary_tables(model: Model) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [positions, head_dim] from the model's rotary module, attention scaling included."""
    inner = get_module(model.module, model.arch.embeddings[0].rpartition(".")[0])
    positions = torch.arange(model.arch.max_positions)[None]
    probe = torch.zeros(1, 1, dtype=torch.float32)
    with torch.no_grad():
        cos, sin = inner.rotary_emb(probe, position_ids=positions)
    return cos[0].float(), sin[0].float()


def _rms_norm(g: Graph, x: str, root, name: str) -> str:
    norm = get_module(root, name)
    eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
    var = g.op("ReduceMean", [g.op("Mul", [x, x]), g.const(np.array([-1]), dtype=I64)], keepdims=1)
    inv = g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [var, g.const(np.float32(eps))])])])
    return g.op("Mul", [g.op("Mul", [x, inv]), g.const(norm.weight, f"{name}.weight")])


def _rotate(g: Graph, t: str, cos: str, sin: str, half: int) -> str:
    """t * cos + rotate_half(t) * sin, rotate_half(t) = [-t2, t1] along the head dimension."""
    axis = g.const(np.array([-1]), dtype=I64)
    t1 = g.op("Slice", [t, g.const(np.array([0]), dtype=I64), g.const(np.array([half]), dtype=I64), axis])
    t2 = g.op("Slice", [t, g.const(np.array([half]), dtype=I64), g.const(np.array([2 * half]), dtype=I64), axis])
    rot = g.op("Concat", [g.op("Neg", [t2]), t1], axis=-1)
    return g.op("Add", [g.op("Mul", [t, cos]), g.op("Mul", [rot, sin])])


def build_decoder(model: Model):
    from onnx import TensorProto, helper
    check_decoder(model)
    g = Graph()
    root, arch = model.module, model.arch
    ids, mask = "input_ids", "attention_mask"
    emb_name = arch.embeddings[0]
    emb = g.const(get_module(root, emb_name).weight, f"{emb_name}.weight")
    x = g.op("Gather", [emb, ids], axis=0)
    seq = g.op("Slice", [g.op("Shape", [ids]), g.const(np.array([1]), dtype=I64), g.const(np.array([2]), dtype=I64)])
    cos_t, sin_t = _rotary_tables(model)
    zero = g.const(np.array([0]), dtype=I64)
    cos = g.op("Slice", [g.const(cos_t, "rotary_cos"), zero, seq, zero])  # [S, D]
    sin = g.op("Slice", [g.const(sin_t, "rotary_sin"), zero, seq, zero])
    lowest = g.const(np.float32(np.finfo(np.float32).min))
    square = g.op("ConstantOfShape", [g.op("Concat", [seq, seq], axis=0)],
                  value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]))
    causal = g.op("Mul", [g.op("Trilu", [square, g.const(np.int64(1), dtype=I64)], upper=1), lowest])  # [S, S]
    pad = g.op("Mul", [g.op("Sub", [g.const(np.float32(1)), g.op("Cast", [mask], to=TensorProto.FLOAT)]), lowest])
    pad = g.op("Unsqueeze", [pad, g.const(np.array([1, 2]), dtype=I64)])  # [B, 1, 1, S]
    bias = g.op("Min", [causal, pad])  # [B, 1, S, S]; Min, not Add: two lowest values would overflow
    for blk in arch.blocks:
        a = blk.attn
        h = _rms_norm(g, x, root, blk.attn_norm)
        split = {n: g.const(np.array([0, 0, heads, a.head_dim]), dtype=I64) for n, heads in
                 (("q", a.n_heads), ("kv", a.n_kv_heads))}
        q = g.op("Transpose", [g.op("Reshape", [linear(g, h, get_module(root, a.q), a.q), split["q"]])], perm=[0, 2, 1, 3])
        k = g.op("Transpose", [g.op("Reshape", [linear(g, h, get_module(root, a.k), a.k), split["kv"]])], perm=[0, 2, 1, 3])
        v = g.op("Transpose", [g.op("Reshape", [linear(g, h, get_module(root, a.v), a.v), split["kv"]])], perm=[0, 2, 1, 3])
        q, k = _rotate(g, q, cos, sin, a.head_dim // 2), _rotate(g, k, cos, sin, a.head_dim // 2)
        if a.n_heads != a.n_kv_heads:  # each KV head serves n_heads / n_kv_heads query heads
            group = a.n_heads // a.n_kv_heads
            flat = g.const(np.array([0, a.n_heads, -1, a.head_dim]), dtype=I64)
            grow = g.const(np.array([1, 1, group, 1, 1]), dtype=I64)
            two = g.const(np.array([2]), dtype=I64)
            k = g.op("Reshape", [g.op("Expand", [g.op("Unsqueeze", [k, two]), grow]), flat])
            v = g.op("Reshape", [g.op("Expand", [g.op("Unsqueeze", [v, two]), grow]), flat])
        scores = g.op("Mul", [g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])]),
                              g.const(np.float32(a.head_dim ** -0.5))])
        probs = g.op("Softmax", [g.op("Add", [scores, bias])], axis=-1)
        ctx = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, g.const(np.array([0, 0, a.n_heads * a.head_dim]), dtype=I64)])
        x = g.op("Add", [x, linear(g, ctx, get_module(root, a.o), a.o)])
        h = _rms_norm(g, x, root, blk.ffn_norm)
        gate = linear(g, h, get_module(root, blk.ffn.gate), blk.ffn.gate)
        act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), linear(g, h, get_module(root, blk.ffn.up), blk.ffn.up)])
        x = g.op("Add", [x, linear(g, act, get_module(root, blk.ffn.down), blk.ffn.down)])
    x = _rms_norm(g, x, root, arch.final_norm)
    if not model.head_is_tied:
        logits = linear(g, x, get_module(root, arch.head), arch.head)
    else:  # tied: the embedding matrix [vocab, hidden] read transposed, not stored twice
        shape = g.op("Shape", [x])
        x2 = g.op("Reshape", [x, g.const(np.array([-1, arch.hidden_size]), dtype=I64)])
        flat_logits = g.op("Gemm", [x2, emb], transB=1)
        vocab = g.const(np.array([get_module(root, emb_name).weight.shape[0]]), dtype=I64)
        out_shape = g.op("Concat", [g.op("Slice", [shape, zero, g.const(np.array([2]), dtype=I64)]), vocab], axis=0)
        logits = g.op("Reshape", [flat_logits, out_shape])
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"]))
    vocab_n = get_module(root, emb_name).weight.shape[0]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in (ids, mask)]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", vocab_n])]
    return helper.make_graph(g.nodes, "slimformer_decoder", inputs, outputs, initializer=g.inits), dict(g.counts)
