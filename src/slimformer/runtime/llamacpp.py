"""A .gguf file run by llama.cpp (llama-cpp-python), behind the calls evaluate/ and bench/ make.

Token ids go in as they are: the caller tokenizes with the tokenizer built from the same GGUF's
vocabulary (model/gguf_tokenizer.py), so a GGUF and its PyTorch original are scored on identical
windows. Logits come back as torch tensors; greedy decoding takes the argmax of llama.cpp's last
logits, as transformers does.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ..errors import MissingDependencyError


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise MissingDependencyError("running a .gguf needs llama-cpp-python: pip install 'slimformer[export]' "
                                     "(it compiles llama.cpp, a few minutes)") from None
    return llama_cpp


def gguf_metadata(path: Path) -> dict:
    """Scalar keys of a GGUF header and its small arrays (per-layer head counts), the vocabulary's
    length, and tensor stats: read without decoding the vocabulary (model/gguf_header.py)."""
    from gguf import GGMLQuantizationType

    from ..model.gguf_header import read_header
    header = read_header(path)
    meta = dict(header.values)
    if "tokenizer.ggml.tokens" in header.lengths:  # files without {arch}.vocab_size (llama.cpp's converter writes none)
        meta["_n_vocab"] = header.lengths["tokenizer.ggml.tokens"]
    meta["_tensor_types"] = dict()
    params = 0
    for _name, shape, ttype in header.tensors:
        params += int(np.prod(shape))
        kind = GGMLQuantizationType(ttype).name
        meta["_tensor_types"][kind] = meta["_tensor_types"].get(kind, 0) + 1
    meta["_params"] = params
    return meta


class LlamaCppModule:
    """Callable like a transformers causal LM: module(input_ids=...).logits, module.generate(...)."""
    runtime = "llama.cpp"

    def __init__(self, path: Path, meta: dict):
        self.path, self.meta = Path(path), meta
        arch = meta["general.architecture"]
        self.config = SimpleNamespace(vocab_size=int(meta.get(f"{arch}.vocab_size") or meta.get("_n_vocab") or 0), model_type=arch)
        self._key, self._context = None, None  # one llama.cpp context at a time: each holds a KV cache
        self.min_ctx = 0  # a caller scoring many lengths (lm-eval) asks for one context of its longest

    def _llm(self, logits_all: bool, n_ctx: int):
        threads = torch.get_num_threads()
        key = (logits_all, n_ctx, threads)
        if key != self._key:
            self._context = None  # free the old one first
            self._context = _llama_cpp().Llama(
                str(self.path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=min(n_ctx, 512), n_threads=threads,
                n_threads_batch=threads, logits_all=logits_all, verbose=False, seed=0)
            self._key = key
        return self._context

    def __call__(self, input_ids: torch.Tensor, **_) -> SimpleNamespace:
        rows = []
        for ids in input_ids.tolist():
            llm = self._llm(True, _ctx(max(len(ids), self.min_ctx)))
            llm.reset()
            llm.eval(ids)
            rows.append(torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float32)))
        return SimpleNamespace(logits=torch.stack(rows))

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 20, min_new_tokens: int | None = None,
                 eos_token_id: int | None = None, **_) -> torch.Tensor:
        outs = []
        for ids in input_ids.tolist():
            llm = self._llm(False, _ctx(len(ids) + max_new_tokens))
            llm.reset()
            llm.eval(ids)
            new = []
            for step in range(max_new_tokens):
                tok = int(np.argmax(_last_logits(llm)))
                new.append(tok)
                if eos_token_id is not None and tok == eos_token_id and step + 1 >= (min_new_tokens or 0):
                    break
                if step + 1 < max_new_tokens:
                    llm.eval([tok])
            outs.append(ids + new)
        return torch.tensor(outs)

    def param_count(self) -> int:
        return int(self.meta["_params"])

    def describe(self) -> str:
        types = ", ".join(f"{n} {k}" for k, n in sorted(self.meta["_tensor_types"].items()))
        return f"llama.cpp (llama-cpp-python {_llama_cpp().__version__}), tensors: {types}"


def _last_logits(llm) -> np.ndarray:
    """Logits of the last evaluated token (llama-cpp-python keeps no copy without logits_all)."""
    return np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),))


def _ctx(n: int) -> int:
    return max(64, -(-n // 64) * 64)  # contexts in steps of 64 tokens, so nearby lengths share one
