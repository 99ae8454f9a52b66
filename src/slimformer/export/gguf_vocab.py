"""The tokenizer of a GGUF export: copied from the source GGUF when the model came from one,
otherwise built from the HF tokenizer (byte-level BPE, the tokenizer of GPT-2 and Llama-3-style
models; llama.cpp's "gpt2" vocabulary type).

llama.cpp names the pre-tokenizer (the regex splitting text before BPE) in `tokenizer.ggml.pre`
and applies its own built-in regex for that name; the name cannot be read off a tokenizer.json.
It matters whenever llama.cpp tokenizes text itself (llama-server, llama-cli; slimformer's own
evaluations feed it token ids). So, as llama.cpp's converter does, it is identified by behaviour:
the vocabulary is written with each candidate name into a small vocabulary-only GGUF, llama.cpp
tokenizes probe texts (digits, contractions, whitespace runs, code, accents, CJK, emoji) with it,
and the first name whose token ids equal the HF tokenizer's on every probe is written
(gguf_pretokenizer.py). No match: "default", and the export says so.
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


def build_from_hf(writer, tokenizer, vocab_size: int) -> str:
    """tokens, types, merges and special ids from a fast HF tokenizer with a BPE model, and the
    llama.cpp pre-tokenizer that splits text as it does; returns that name."""
    from .gguf_pretokenizer import identify_pre
    vocab = hf_vocab(tokenizer, vocab_size)
    pre = identify_pre(tokenizer, lambda w, name: write_vocab(w, vocab, name)) or "default"
    write_vocab(writer, vocab, pre)
    return pre


def hf_vocab(tokenizer, vocab_size: int) -> dict:
    """What a GGUF vocabulary holds, read from a fast HF tokenizer with a BPE model."""
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
    special_ids = {name: getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "unk", "pad")}
    ids = tokenizer("a").input_ids
    template = getattr(tokenizer, "chat_template", None)
    return {"tokens": tokens, "types": types, "merges": merges, "special": special_ids,
            "add_bos": bool(ids) and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id,
            "template": template if isinstance(template, str) else None}


def write_vocab(writer, vocab: dict, pre: str) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(vocab["merges"])
    adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id,
              "unk": writer.add_unk_token_id, "pad": writer.add_pad_token_id}
    for name, tid in vocab["special"].items():
        if tid is not None:
            adders[name](int(tid))
    writer.add_add_bos_token(vocab["add_bos"])
    if vocab["template"]:
        writer.add_chat_template(vocab["template"])
