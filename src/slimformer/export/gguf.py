"""GGUF for llama.cpp: the decoders whose Family names a llama.cpp architecture (llama, mistral,
qwen2, qwen3, gemma3, phi3), trimmed ones included.

Shapes come from the weights, not the original config: a trimmed model writes its own layer
count, hidden size, head and KV-head counts and FFN width. llama.cpp's graphs give every layer
the same shapes: unequal FFN widths (global allocation) are zero-padded to the widest, which is
exact; unequal head counts are refused. What the target architecture computes is checked against
the ArchMap first (gguf_targets.py); tensors are laid out in gguf_tensors.py, the header in
gguf_meta.py. Quantized linears whose grid a GGML type holds exactly keep slimformer's codes
(gguf_blocks.py), and GgmlLinear layers (quantize: {ggml: TYPE}) their blocks as they are
(nn/ggml_blocks.py); other weights are written in `dtype` (f32, f16, or llama.cpp's own
round-to-nearest q8_0 / q4_0 / q4_1).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..errors import ConfigValueError, UnsupportedModelError
from ..model import Model
from ..model.arch import get_module
from ..nn import compressed_modules
from . import gguf_vocab
from .gguf_blocks import DENSE_TYPES
from .gguf_meta import FILE_TYPE, context_length, write_metadata  # noqa: F401 - FILE_TYPE re-exported
from .gguf_targets import Target, check_model, check_vocabulary, target
from .gguf_tensors import model_tensors, rotary_order as _rotary_order  # noqa: F401 - tests read it


def _target(model: Model) -> Target:
    from ..model.families import exports_for, family
    if "gguf" not in exports_for(model.arch) and model.arch.kind != "causal":
        raise UnsupportedModelError(f"GGUF export writes causal language models for llama.cpp; this "
                                    f"{model.arch.model_type!r} model attends both ways (an encoder): export it as "
                                    f"{' or '.join(exports_for(model.arch))}")
    if "gguf" not in exports_for(model.arch):
        raise UnsupportedModelError(f"GGUF export does not hold {model.arch.model_type!r} models yet; export it "
                                    f"as {' or '.join(exports_for(model.arch))}")
    return target(family(model.arch).gguf_arch[model.arch.model_type])


def check_exportable(model: Model) -> None:
    t = _target(model)
    arch, root = model.arch, model.module
    # the scale the ArchMap states (where the family records one) and the one each module applies
    scales = [float(getattr(get_module(root, b.attn.module), "scaling", b.attn.head_dim ** -0.5))
              for b in arch.blocks] + ([arch.attn_scale] if getattr(arch, "attn_scale", None) else [])
    check_model(arch, t, scales)
    cfg = root.config
    softcaps = {"attention logit softcapping": getattr(arch, "attn_softcap", None) or
                getattr(cfg, "attn_logit_softcapping", None),
                "final logit softcapping": getattr(cfg, "final_logit_softcapping", None)}
    for what, cap in softcaps.items():
        if cap:
            raise UnsupportedModelError(f"{what} is not written by slimformer's GGUF export; export as hf")
    for blk in arch.blocks:
        for name in blk.ffn.linears + [blk.attn.o]:
            if getattr(get_module(root, name), "bias", None) is not None:
                raise UnsupportedModelError(f"{name} has a bias, which llama.cpp's {t.name} architecture does "
                                            "not read (it reads q/k/v biases only); export as hf")


def write_gguf(model: Model, path: Path, dtype: str = "f16", embedding_dtype: str | None = None,
               source_gguf: Path | None = None) -> dict:
    """Write `model` to the GGUF file `path` (the caller makes it atomic); returns what was written."""
    from gguf import GGMLQuantizationType, GGUFWriter
    embedding_dtype = embedding_dtype or mix_embedding_type(model) or dtype
    for kind in (dtype, embedding_dtype):
        if kind not in DENSE_TYPES:
            raise ConfigValueError(f"GGUF type {kind!r}: choose one of {', '.join(DENSE_TYPES)}")
    check_exportable(model)
    t = _target(model)
    check_vocabulary(model.tokenizer.get_vocab(), t)
    arch, root = model.arch, model.module
    writer = GGUFWriter(str(path), t.name)
    ffn_width = _check_uniform(model)
    tensors = list(model_tensors(root, arch, t, dtype, embedding_dtype, ffn_width, model.head_is_tied))
    kinds = Counter(kind for _, _, kind, _ in tensors)
    vocab_size = int(get_module(root, arch.embeddings[0]).weight.shape[0])
    write_metadata(writer, arch, t, model.name,
                   f"written by slimformer from {model.name}; stages: "
                   f"{', '.join(e['stage'] for e in model.log) or 'none'}", ffn_width, vocab_size, kinds)
    if source_gguf is not None:
        gguf_vocab.copy_from_gguf(writer, source_gguf)
        tokenizer = f"copied from {source_gguf.name}"
    else:
        pre = gguf_vocab.build_from_hf(writer, model.tokenizer, vocab_size)
        from .gguf_pretokenizer import llama_cpp_version
        version = llama_cpp_version()
        tokenizer = (f"built from the HF tokenizer, llama.cpp pre-tokenizer {pre!r} (splits the probe texts "
                     f"as the HF tokenizer does in llama-cpp-python {version})" if pre != "default" else
                     "built from the HF tokenizer, pre-tokenizer 'default': "
                     + ("no pre-tokenizer of llama-cpp-python " + version + " splits text as it does"
                        if version else "llama-cpp-python is not installed, so none was identified")
                     + "; feed llama.cpp token ids, not text")
    for name, data, kind, _ in tensors:
        if kind in ("f32", "f16"):
            writer.add_tensor(name, data)
        else:
            writer.add_tensor(name, data, raw_dtype=getattr(GGMLQuantizationType, kind.upper()))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    padded = sum(ffn_width - b.ffn.width for b in arch.blocks)
    out = {"architecture": t.name, "tensor_types": dict(kinds),
           "exact_codes": sum(1 for *_, exact in tensors if exact), "ffn_zero_padding": padded,
           "tokenizer": tokenizer}
    if context_length(arch, t) < arch.max_positions:
        out["context_length"] = f"{context_length(arch, t)} (the sliding window: llama.cpp's {t.name} has none)"
    return out


def mix_embedding_type(model: Model) -> str | None:
    """The token table's type a quantize stage with ggml_mix chose (llama.cpp's for that file type)."""
    types = [e.get("ggml_embedding") for e in model.log if e.get("stage") == "quantize"]
    return types[-1] if types else None


def _check_uniform(model: Model) -> int:
    """llama.cpp's graphs give every layer layer 0's head counts and FFN width. Unequal FFN
    widths are padded with zero neurons (exact: act(0) * 0 = 0 meets zero columns of down);
    unequal head counts cannot be, and quantized layers are not padded. Returns the FFN width."""
    blocks = model.arch.blocks
    if len({(b.attn.n_heads, b.attn.n_kv_heads, b.attn.head_dim) for b in blocks}) > 1:
        raise UnsupportedModelError("llama.cpp needs the same head counts in every layer; "
                                    "trim heads with allocation: uniform to export as GGUF")
    widths = [b.ffn.width for b in blocks]
    if len(set(widths)) > 1 and compressed_modules(model.module):
        raise UnsupportedModelError("quantized layers with unequal FFN widths cannot be written to GGUF "
                                    "(llama.cpp needs one width); trim the FFN with allocation: uniform")
    return max(widths)


def source_gguf_of(model: Model) -> Path | None:
    """The .gguf file the model was first loaded from (its tokenizer is copied as is), if any."""
    import json
    from ..model.sources import resolve
    candidates = [model.source]
    if model.path is not None and (model.path / "slimformer.json").is_file():
        candidates.insert(0, json.loads((model.path / "slimformer.json").read_text()).get("source", ""))
    for given in candidates:
        try:
            src = resolve(str(given))
        except Exception:
            continue
        if src.kind == "gguf":
            return Path(src.location)
    return None
