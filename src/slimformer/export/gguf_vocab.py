"""The tokenizer of a GGUF export: copied from the source GGUF when the model came from one,
otherwise built from the HF tokenizer (byte-level BPE, the tokenizer of GPT-2 and Llama-3-style
models; llama.cpp's "gpt2" vocabulary type).

llama.cpp names the pre-tokenizer (the regex splitting text before BPE) in `tokenizer.ggml.pre`;
it cannot be read off a tokenizer.json, so a built vocabulary says "default" (GPT-2's split). That
only matters when llama.cpp tokenizes text itself; slimformer's evaluations feed it token ids.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import UnsupportedModelError

# llama.cpp's token types (llama.h: LLAMA_TOKEN_TYPE_*).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED = 1, 2, 3, 4, 5


def copy_from_gguf(writer, source: Path) -> None:
    """Every tokenizer.* key of `source`, value and type unchanged."""
    from gguf import GGUFValueType

    from ..model.gguf_header import read_header
    header = read_header(source, arrays=("tokenizer.",))
    for key, value in header.values.items():
        if not key.startswith("tokenizer."):
            continue
        vtype, etype = header.types[key]
        if etype is not None:
            writer.add_key_value(key, value, GGUFValueType(vtype), sub_type=GGUFValueType(etype))
        else:
            writer.add_key_value(key, value, GGUFValueType(vtype))


def build_from_hf(writer, tokenizer, vocab_size: int) -> None:
    """tokens, types, merges and special ids from a fast HF tokenizer with a BPE model."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise UnsupportedModelError(
            f"the tokenizer is {model.get('type') or 'not a fast tokenizer'}; a GGUF export builds "
            "byte-level BPE vocabularies (GPT-2 / Llama-3 style) or copies the tokenizer of a source .gguf")
    id_to_token = {i: t for t, i in model["vocab"].items()}
    special = {a["id"]: a for a in spec.get("added_tokens", [])}
    for i, a in special.items():
        id_to_token[i] = a["content"]
    tokens, types = [], []
    for i in range(vocab_size):
        if i in id_to_token:
            tokens.append(id_to_token[i])
            a = special.get(i)
            types.append(NORMAL if a is None else CONTROL if a.get("special") else USER_DEFINED)
        else:  # embedding rows beyond the tokenizer (padded vocabularies)
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for name, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        tid = getattr(tokenizer, f"{name}_token_id", None)
        if tid is not None:
            add(int(tid))
    ids = tokenizer("a").input_ids
    writer.add_add_bos_token(bool(ids) and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        writer.add_chat_template(template)
