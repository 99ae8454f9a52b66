"""ONNX for ONNX Runtime: encoders of every family whose description names an ONNX form (bert,
roberta, xlm-roberta, camembert, distilbert, mpnet, modernbert; onnx_encoder.py), trimmed, pruned
and W8A8-quantized ones included; Llama-family decoders as a scoring graph (onnx_decoder.py).

The graph is written from the ArchMap, block by block, so every block has its own head count and
widths (trimming may leave them unequal) and quantized linears keep slimformer's codes and scales
(onnx_graph.py). Inputs: `input_ids` and `attention_mask` (int64, [batch, sequence], both axes
dynamic); token types are 0 (a sentence encoder reads one segment). Outputs: `last_hidden_state`
[batch, sequence, hidden] and `sentence_embedding` [batch, dim]: the sentence-transformers modules
of the model in the graph (pooling as declared, its Dense layers, L2 normalisation if it
normalises; onnx_sentence.py).

The export folder also holds config.json, the tokenizer and the sentence-transformers files, so
`slimformer eval FOLDER` (or FOLDER/model.onnx) runs it in ONNX Runtime with the same tokenization.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import MissingDependencyError, UnsupportedModelError
from ..model import Model
from .onnx_encoder import check_encoder, encoder_states
from .onnx_graph import OPSET, Graph
from .onnx_sentence import embedding_size, sentence_head

EXPORT_META = "slimformer-export.json"


def check_exportable(model: Model) -> None:
    from ..model.families import exports_for, family
    form = family(model.arch).onnx
    if form is None or (form == "encoder" and model.is_causal):
        raise UnsupportedModelError(f"ONNX export does not hold {model.arch.model_type!r} models; export it as "
                                    f"{' or '.join(exports_for(model.arch))}")
    if family(model.arch).onnx == "decoder":
        from .onnx_decoder import check_decoder
        check_decoder(model)
    else:
        check_encoder(model)
    _check_onnx_installed()


def _check_onnx_installed() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise MissingDependencyError("ONNX export needs onnx: pip install 'slimformer[export]'") from None


def build_encoder(model: Model, form: str = "ort"):
    """The encoder as an onnx GraphProto, and counts of how each linear was written; `form`:
    quantized linears as ONNX Runtime's integer ops ("ort") or as Q/DQ pairs ("qdq", for OpenVINO)."""
    from onnx import TensorProto, helper
    check_encoder(model)
    g = Graph(form)
    ids, mask = "input_ids", "attention_mask"
    maskf = g.op("Cast", [mask], to=TensorProto.FLOAT)
    states = encoder_states(g, model, ids, maskf)
    g.nodes.append(helper.make_node("Identity", [states], ["last_hidden_state"]))
    emb = sentence_head(g, model, "last_hidden_state", maskf)
    g.nodes.append(helper.make_node("Identity", [emb], ["sentence_embedding"]))
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in (ids, mask)]
    outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT,
                                             ["batch", "sequence", model.arch.hidden_size]),
               helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", embedding_size(model)])]
    return helper.make_graph(g.nodes, "slimformer_encoder", inputs, outputs, initializer=g.inits), dict(g.counts)


def model_proto(graph):
    from onnx import helper
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="slimformer")
    proto.ir_version = 10  # readable by ONNX Runtime 1.20 and newer
    return proto


def write_folder_files(model: Model, folder: Path, fmt: str, counts: dict, **extra) -> None:
    """What an export folder holds beside its graph: config.json, the tokenizer and
    sentence-transformers files, and EXPORT_META (what the runtime adapters read back)."""
    from ..model.info import param_count
    from ..model.save import write_tokenizer_files
    model.module.config.save_pretrained(folder)
    write_tokenizer_files(model, folder)
    meta = {"format": fmt, "opset": OPSET, "source": model.name, "kind": model.arch.kind,
            "model_type": model.arch.model_type, "hidden_size": model.arch.hidden_size,
            "max_positions": model.arch.max_positions, "params": param_count(model),
            "pooling": {"mode": model.pooling.mode, "normalize": model.pooling.normalize,
                        "max_length": model.pooling.max_length},  # what the runtime adapter reads back
            "sentence_modules": model.pooling.describe(),
            "inputs": ["input_ids", "attention_mask"],
            "outputs": ["logits"] if model.is_causal else ["last_hidden_state", "sentence_embedding"],
            "linears": counts, "stages": [e.get("stage") for e in model.log], **extra}
    (folder / EXPORT_META).write_text(json.dumps(meta, indent=2) + "\n")


def write_onnx_folder(model: Model, folder: Path) -> dict:
    import onnx
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
    write_folder_files(model, folder, "onnx", counts)
    return {"opset": OPSET, "linears": counts, "nodes": len(proto.graph.node)}
