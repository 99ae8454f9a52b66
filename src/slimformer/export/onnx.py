"""ONNX for ONNX Runtime: BERT-family encoders (bert, roberta, xlm-roberta, camembert, distilbert),
trimmed, pruned and W8A8-quantized ones included; Llama-family decoders as a scoring graph
(onnx_decoder.py).

The graph is written from the ArchMap, block by block, so every block has its own head count and
widths (trimming may leave them unequal) and quantized linears keep slimformer's codes and scales
(onnx_graph.py). Inputs: `input_ids` and `attention_mask` (int64, [batch, sequence], both axes
dynamic); token types are 0 (a sentence encoder reads one segment). Outputs: `last_hidden_state`
[batch, sequence, hidden] and `sentence_embedding` [batch, hidden], pooled as the model's
sentence-transformers config says (mean / cls / max, L2-normalised if it normalises).

The export folder also holds config.json, the tokenizer and the sentence-transformers files, so
`slimformer eval FOLDER` (or FOLDER/model.onnx) runs it in ONNX Runtime with the same tokenization.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import MissingDependencyError, UnsupportedModelError
from ..model import Model
from ..model.arch import get_module
from .onnx_graph import OPSET, Graph, linear

EXPORT_META = "slimformer-export.json"
ACTIVATIONS = {"gelu": ("Gelu", "none"), "gelu_new": ("Gelu", "tanh"), "gelu_pytorch_tanh": ("Gelu", "tanh"),
               "relu": ("Relu", None), "silu": ("silu", None), "swish": ("silu", None)}


def check_exportable(model: Model) -> None:
    from ..model.families import exports_for, family
    if family(model.arch).onnx is None:
        raise UnsupportedModelError(f"ONNX export does not hold {model.arch.model_type!r} models; export it as "
                                    f"{' or '.join(exports_for(model.arch))}")
    if family(model.arch).onnx == "decoder":
        from .onnx_decoder import check_decoder
        check_decoder(model)
        return _check_onnx_installed()
    act = _activation_name(model)
    if act not in ACTIVATIONS:
        raise UnsupportedModelError(f"activation {act!r} has no ONNX form here; supported: {', '.join(ACTIVATIONS)}")
    _check_onnx_installed()


def _check_onnx_installed() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise MissingDependencyError("ONNX export needs onnx: pip install 'slimformer[export]'") from None


def _activation_name(model: Model) -> str:
    cfg = model.module.config
    return str(getattr(cfg, "hidden_act", None) or getattr(cfg, "activation", "gelu"))


def build_encoder(model: Model):
    """The encoder as an onnx GraphProto, and counts of how each linear was written."""
    from onnx import TensorProto, helper
    g = Graph()
    root, arch = model.module, model.arch
    ids, mask = "input_ids", "attention_mask"
    x = _embeddings(g, model, ids, mask)
    maskf = g.op("Cast", [mask], to=TensorProto.FLOAT)
    neg = g.op("Mul", [g.op("Sub", [g.const(np.float32(1)), maskf]), g.const(np.float32(np.finfo(np.float32).min))])
    bias = g.op("Unsqueeze", [neg, g.const(np.array([1, 2]), dtype=np.int64)])  # [B, 1, 1, S]
    act, approx = ACTIVATIONS[_activation_name(model)]
    for blk in arch.blocks:
        a = blk.attn
        q, k, v = (linear(g, x, get_module(root, n), n) for n in (a.q, a.k, a.v))
        heads = g.const(np.array([0, 0, a.n_heads, a.head_dim]), dtype=np.int64)
        q = g.op("Transpose", [g.op("Reshape", [q, heads])], perm=[0, 2, 1, 3])
        k = g.op("Transpose", [g.op("Reshape", [k, heads])], perm=[0, 2, 3, 1])
        v = g.op("Transpose", [g.op("Reshape", [v, heads])], perm=[0, 2, 1, 3])
        scores = g.op("Mul", [g.op("MatMul", [q, k]), g.const(np.float32(a.head_dim ** -0.5))])
        probs = g.op("Softmax", [g.op("Add", [scores, bias])], axis=-1)
        ctx = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, g.const(np.array([0, 0, a.n_heads * a.head_dim]), dtype=np.int64)])
        x = _layer_norm(g, g.op("Add", [linear(g, ctx, get_module(root, a.o), a.o), x]), root, blk.attn_norm)
        h = linear(g, x, get_module(root, blk.ffn.up), blk.ffn.up)
        if act == "silu":
            h = g.op("Mul", [h, g.op("Sigmoid", [h])])
        elif act == "Gelu":
            h = g.op("Gelu", [h], approximate=approx)
        else:
            h = g.op(act, [h])
        y = linear(g, h, get_module(root, blk.ffn.down), blk.ffn.down)
        x = _layer_norm(g, g.op("Add", [y, x]), root, blk.ffn_norm)
    g.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"]))
    _pooling(g, model, "last_hidden_state", maskf)
    hidden = arch.hidden_size
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in (ids, mask)]
    outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", hidden]),
               helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", hidden])]
    return helper.make_graph(g.nodes, "slimformer_encoder", inputs, outputs, initializer=g.inits), dict(g.counts)


def model_proto(graph):
    from onnx import helper
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="slimformer")
    proto.ir_version = 10  # readable by ONNX Runtime 1.20 and newer
    return proto


def _embeddings(g: Graph, model: Model, ids: str, mask: str) -> str:
    root, arch = model.module, model.arch
    word = get_module(root, arch.embeddings[0]).weight
    x = g.op("Gather", [g.const(word, f"{arch.embeddings[0]}.weight"), ids], axis=0)
    pos_table = g.const(get_module(root, arch.embeddings[1]).weight, f"{arch.embeddings[1]}.weight")
    if arch.position_offset:  # RoBERTa: ids after the padding index, counted over real tokens
        pad = arch.position_offset - 1
        real = g.op("Cast", [g.op("Not", [g.op("Equal", [ids, g.const(np.int64(pad), dtype=np.int64)])])], to=7)
        positions = g.op("Add", [g.op("Mul", [g.op("CumSum", [real, g.const(np.int64(1), dtype=np.int64)]), real]),
                                 g.const(np.int64(pad), dtype=np.int64)])
    else:  # 0 .. S-1: the first S entries of a position-id table, as transformers' own graphs do
        one = g.const(np.array([1]), dtype=np.int64)
        seq = g.op("Slice", [g.op("Shape", [ids]), one, g.const(np.array([2]), dtype=np.int64)])
        table = g.const(np.arange(arch.max_positions)[None, :], "position_ids", dtype=np.int64)
        positions = g.op("Slice", [table, g.const(np.array([0]), dtype=np.int64), seq, one])
    x = g.op("Add", [x, g.op("Gather", [pos_table, positions], axis=0)])
    if len(arch.embeddings) > 2:  # token type 0 for every token
        types = get_module(root, arch.embeddings[2]).weight[0]
        x = g.op("Add", [x, g.const(types, f"{arch.embeddings[2]}.row0")])
    return _layer_norm(g, x, root, arch.embedding_norm)


def _layer_norm(g: Graph, x: str, root, name: str) -> str:
    ln = get_module(root, name)
    return g.op("LayerNormalization", [x, g.const(ln.weight, f"{name}.weight"), g.const(ln.bias, f"{name}.bias")],
                axis=-1, epsilon=float(ln.eps))


def _pooling(g: Graph, model: Model, states: str, maskf: str) -> None:
    from onnx import helper
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
    if model.pooling.normalize:
        emb = g.op("LpNormalization", [emb], axis=-1, p=2)
    g.nodes.append(helper.make_node("Identity", [emb], ["sentence_embedding"]))


def write_onnx_folder(model: Model, folder: Path) -> dict:
    import onnx
    from ..model.info import param_count
    from ..model.save import write_tokenizer_files
    if model.is_causal:
        from .onnx_decoder import build_decoder
        graph, counts = build_decoder(model)
    else:
        graph, counts = build_encoder(model)
    proto = model_proto(graph)
    big = sum(len(t.raw_data) for t in proto.graph.initializer) > 1_500_000_000  # protobuf stops at 2 GB
    if not big:
        onnx.checker.check_model(proto, full_check=False)
    onnx.save_model(proto, str(folder / "model.onnx"), save_as_external_data=big, location="model.onnx.data")
    model.module.config.save_pretrained(folder)
    write_tokenizer_files(model, folder)
    meta = {"format": "onnx", "opset": OPSET, "source": model.name, "kind": model.arch.kind,
            "model_type": model.arch.model_type, "hidden_size": model.arch.hidden_size,
            "max_positions": model.arch.max_positions, "params": param_count(model),
            "pooling": {"mode": model.pooling.mode, "normalize": model.pooling.normalize,
                        "max_length": model.pooling.max_length},
            "inputs": ["input_ids", "attention_mask"],
            "outputs": ["logits"] if model.is_causal else ["last_hidden_state", "sentence_embedding"],
            "linears": counts, "stages": [e.get("stage") for e in model.log]}
    (folder / EXPORT_META).write_text(json.dumps(meta, indent=2) + "\n")
    return {"opset": OPSET, "linears": counts, "nodes": len(proto.graph.node)}
