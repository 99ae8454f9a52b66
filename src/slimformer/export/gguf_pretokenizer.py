"""Which of llama.cpp's pre-tokenizers splits text as an HF tokenizer does, found by behaviour.

llama.cpp does not read a tokenizer's regex from the file: `tokenizer.ggml.pre` names one of the
splitters built into it. For each candidate name (the common byte-level BPE families first) the
vocabulary is written with that name into a vocabulary-only GGUF (a few hundred ms), llama.cpp
loads it (`vocab_only`) and tokenizes the probe texts; the first name whose ids equal the HF
tokenizer's on every probe is the answer. An unknown name is refused by llama.cpp at load and
skipped, so a list naming a splitter that a given llama.cpp lacks costs nothing.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

# llama.cpp's pre-tokenizer names, byte-level BPE families ("gpt-2" is GPT-2's own regex); "default"
# (llama.cpp's fallback chain of splits) last
CANDIDATES = ("llama-bpe", "smollm", "qwen2", "gpt-2", "gpt-4o", "deepseek-llm", "deepseek-v3", "starcoder",
              "falcon", "olmo", "stablelm2", "tekken", "command-r", "dbrx", "refact", "mpt", "bloom",
              "poro-chat", "default")

# what tells the splitters apart: digit runs (single digits, groups of three, any length),
# English contractions in either case, runs of spaces / newlines / tabs, punctuation glued to words,
# code, accented Latin, CJK, emoji
PROBES = (
    "Hello world! I've been 3333333 times; it's 12,345.67 USD (or 1e-9?)",
    "DON'T you'RE we'LL they'd\n\n\n   three spaces\tand\t\ttabs  \n end",
    "def f(x):\n    return x**2  # squares\n\tif a==b: print('ok')",
    "Ça coûte 5€ — naïve façade; 日本語のテキスト、中文句子。 emoji 🙂🚀 ok",
    "   leading spaces and trailing   ",
    "123 4567 89012345 0.5 1/2 3:45pm 2026-12-07",
)


def llama_cpp_version() -> str | None:
    try:
        import llama_cpp
    except ImportError:
        return None
    return llama_cpp.__version__


def identify_pre(tokenizer, write_vocab: Callable[[object, str], None]) -> str | None:
    """The first candidate whose llama.cpp tokenization of every probe equals `tokenizer`'s, or
    None (llama-cpp-python missing, or no candidate matches). `write_vocab(writer, name)` writes
    the vocabulary keys with pre-tokenizer `name`."""
    try:
        import llama_cpp
    except ImportError:
        return None
    want = [tokenizer(p, add_special_tokens=False).input_ids for p in PROBES]
    with tempfile.TemporaryDirectory(prefix="slimformer-pre-") as tmp:
        for name in CANDIDATES:
            path = Path(tmp) / f"{name}.gguf"
            _vocab_only_file(path, lambda w: write_vocab(w, name))
            try:
                llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
            except (ValueError, RuntimeError):  # a name this llama.cpp does not know
                continue
            got = [llm.tokenize(p.encode("utf-8"), add_bos=False, special=False) for p in PROBES]
            del llm
            if got == want:
                return name
    return None


def _vocab_only_file(path: Path, write_vocab: Callable[[object], None]) -> None:
    """A GGUF with the vocabulary and the few hyperparameters llama.cpp reads before it (no tensors)."""
    import gguf
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(512)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(64)
    w.add_head_count(1)
    w.add_layer_norm_rms_eps(1e-5)
    write_vocab(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
