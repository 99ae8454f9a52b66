"""How close a model's outputs are to a reference model's on the same inputs.

Encoders: cosine between pooled embeddings of the same sentences; the compress report measures it
on held-out text of several domains (`encoder_fidelity`) and says whether the embeddings are
interchangeable with the original's (mean >= 0.99 and 1st percentile >= 0.95 on every set: an
index built with the original then still serves; below, re-embed it).
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


# held-out text of three domains (none of it a training split): STS-B test (captions, news,
# forums), WikiText-2 test (encyclopedia sentences), SST-2 dev (movie-review phrases)
FIDELITY_SETS = (("stsb", "test"), ("wikitext2", "test"), ("sst2", "dev"))
INTERCHANGEABLE = {"mean": 0.99, "p01": 0.95}


def encoder_fidelity(model: Model, reference: Model, sets=FIDELITY_SETS, per_set: int = 500,
                     batch_size: int = 64) -> EvalResult:
    """Embedding cosine on the first `per_set` unique texts of each (data, split): mean and 1st
    percentile per set and over all, and whether the embeddings are interchangeable."""
    from ..data import resolve_data, text_sentences
    _check_pair(model, reference)
    t0 = time.perf_counter()
    out, all_cos = {}, []
    for data, split in sets:
        texts = list(dict.fromkeys(text_sentences(resolve_data(data, split))))[:per_set]
        cos = torch.nn.functional.cosine_similarity(encode(model, texts, batch_size),
                                                    encode(reference, texts, batch_size), dim=-1)
        out[f"{data}/{split}"] = {"n": len(texts), "mean": float(cos.mean()), "p01": float(cos.quantile(0.01))}
        all_cos.append(cos)
    cos = torch.cat(all_cos)
    ok = all(v["mean"] >= INTERCHANGEABLE["mean"] and v["p01"] >= INTERCHANGEABLE["p01"] for v in out.values())
    return EvalResult(
        task="fidelity", model=model.name, metric="mean_cosine", value=float(cos.mean()), higher_is_better=True,
        data=", ".join(out), split=None, n=int(cos.numel()),
        protocol=(f"cosine between the pooled embeddings of {model.name} and {reference.name} on the first "
                  f"{per_set} unique texts of each of {', '.join(out)} (held-out text of three domains); "
                  f"interchangeable: mean >= {INTERCHANGEABLE['mean']} and 1st percentile >= "
                  f"{INTERCHANGEABLE['p01']} on every set"),
        extra={"reference": reference.name, "p01_cosine": float(cos.quantile(0.01)), "min_cosine": float(cos.min()),
               "sets": out, "interchangeable": ok},
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
