"""How close a model's outputs are to a reference model's on the same inputs.

Encoders: cosine between pooled embeddings of the same sentences.
Causal LMs: KL(reference || model) of next-token distributions, and top-1 agreement.
"""
from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from ..errors import ConfigValueError
from ..model import Model
from ..results import EvalResult
from .embed import encode
from .windows import batches, token_windows


def embedding_fidelity(model: Model, reference: Model, sentences: list[str], data: str = "",
                       split: str | None = None, batch_size: int = 64) -> EvalResult:
    _check_pair(model, reference)
    t0 = time.perf_counter()
    cos = torch.nn.functional.cosine_similarity(
        encode(model, sentences, batch_size), encode(reference, sentences, batch_size), dim=-1)
    return EvalResult(
        task="fidelity", model=model.name, metric="mean_cosine", value=float(cos.mean()),
        higher_is_better=True, data=data, split=split, n=len(sentences),
        protocol=f"cosine between pooled embeddings of {model.name} and {reference.name} on the same sentences",
        extra={"reference": reference.name, "min_cosine": float(cos.min()),
               "p01_cosine": float(cos.quantile(0.01))},
        wall_s=time.perf_counter() - t0)


@torch.inference_mode()
def logit_fidelity(model: Model, reference: Model, text: str, seq_len: int = 1024,
                   max_windows: int | None = 8, data: str = "", split: str | None = None,
                   progress: bool = True) -> EvalResult:
    _check_pair(model, reference)
    t0 = time.perf_counter()
    windows = token_windows(reference, text, seq_len, max_windows)
    kl_sum, agree, n = 0.0, 0, 0
    for w in tqdm(list(batches(windows, 1)), desc="fidelity", disable=not progress, leave=False):
        lp = torch.log_softmax(model.module(input_ids=w, use_cache=False).logits.float(), -1)
        lq = torch.log_softmax(reference.module(input_ids=w, use_cache=False).logits.float(), -1)
        kl_sum += float((lq.exp() * (lq - lp)).sum(-1).double().sum())
        agree += int((lp.argmax(-1) == lq.argmax(-1)).sum())
        n += w.numel()
    return EvalResult(
        task="fidelity", model=model.name, metric="kl", value=kl_sum / n, higher_is_better=False,
        data=data, split=split, n=n,
        protocol=(f"KL(reference || model) of next-token distributions, mean over {n} positions of "
                  f"{windows.shape[0]} windows of {seq_len} tokens; reference {reference.name}"),
        extra={"reference": reference.name, "top1_agreement": agree / n},
        wall_s=time.perf_counter() - t0)


def _check_pair(model: Model, reference: Model) -> None:
    if model.kind != reference.kind:
        raise ConfigValueError(f"cannot compare a {model.kind} with a {reference.kind}; "
                               "pass a --reference of the same kind")
    if len(model.tokenizer) != len(reference.tokenizer):
        raise ConfigValueError("the model and the reference use different tokenizers; "
                               "fidelity needs the same vocabulary")
