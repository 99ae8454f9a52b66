"""The sentence-transformers modules after the Transformer, in the graph: pooling (mean / cls /
max over real tokens), each Dense layer (x W^T + b, then its activation), Normalize (L2)."""
from __future__ import annotations

import numpy as np

from ..model import Model
from .onnx_graph import Graph


def sentence_head(g: Graph, model: Model, states: str, maskf: str) -> str:
    """sentence_embedding [B, dim] from the token states [B, S, hidden] and the float mask [B, S]."""
    axis1 = g.const(np.array([1]), dtype=np.int64)
    m = g.op("Unsqueeze", [maskf, g.const(np.array([2]), dtype=np.int64)])  # [B, S, 1]
    mode = model.pooling.mode
    if mode == "cls":
        emb = g.op("Gather", [states, g.const(np.int64(0), dtype=np.int64)], axis=1)
    elif mode == "max":
        neg = g.op("Mul", [g.op("Sub", [g.const(np.float32(1)), m]), g.const(np.float32(-1e30))])
        emb = g.op("ReduceMax", [g.op("Add", [states, neg]), axis1], keepdims=0)
    else:
        total = g.op("ReduceSum", [g.op("Mul", [states, m]), axis1], keepdims=0)
        count = g.op("Max", [g.op("ReduceSum", [m, axis1], keepdims=0), g.const(np.float32(1e-9))])
        emb = g.op("Div", [total, count])
    for dense in model.pooling.dense:
        name = dense.path.replace("/", ".")
        emb = g.op("MatMul", [emb, g.const(dense.weight.t(), f"{name}.weight_t")])
        if dense.bias is not None:
            emb = g.op("Add", [emb, g.const(dense.bias, f"{name}.bias")])
        op = dense.onnx_op
        if op == "silu":
            emb = g.op("Mul", [emb, g.op("Sigmoid", [emb])])
        elif op == "Gelu":
            emb = g.op("Gelu", [emb], approximate="none")
        elif op is not None:
            emb = g.op(op, [emb])
    if model.pooling.normalize:
        emb = g.op("LpNormalization", [emb], axis=-1, p=2)
    return emb


def embedding_size(model: Model) -> int:
    return model.pooling.dense[-1].weight.shape[0] if model.pooling.dense else model.arch.hidden_size
