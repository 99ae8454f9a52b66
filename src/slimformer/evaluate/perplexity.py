"""Perplexity of a causal LM on a text: exp of the mean next-token NLL over non-overlapping windows."""
from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm

from ..errors import UnsupportedModelError
from ..model import Model
from ..results import EvalResult
from .windows import batches, token_windows


@torch.inference_mode()
def window_nll(model: Model, windows: torch.Tensor) -> torch.Tensor:
    """Summed NLL of tokens 1..L-1 given their prefix, one value per window (float64)."""
    logits = model.module(input_ids=windows, use_cache=False).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -logp.gather(-1, windows[:, 1:, None]).squeeze(-1)
    return nll.double().sum(dim=1)


def perplexity(model: Model, text: str, seq_len: int = 1024, max_windows: int | None = None,
               batch_size: int = 1, data: str = "", split: str | None = None,
               progress: bool = True) -> EvalResult:
    if not model.is_causal:
        raise UnsupportedModelError(f"perplexity needs a causal LM; {model.name} is an encoder "
                                    "(use --task sts or fidelity)")
    t0 = time.perf_counter()
    windows = token_windows(model, text, seq_len, max_windows)
    total = 0.0
    for w in tqdm(list(batches(windows, batch_size)), desc="ppl windows", disable=not progress, leave=False):
        total += float(window_nll(model, w).sum())
    n_tokens = windows.shape[0] * (seq_len - 1)
    mean_nll = total / n_tokens
    return EvalResult(
        task="ppl", model=model.name, metric="perplexity", value=math.exp(mean_nll),
        higher_is_better=False, data=data, split=split, n=n_tokens,
        protocol=(f"whole file tokenized once (tokenizer defaults), {windows.shape[0]} non-overlapping "
                  f"windows of {seq_len} tokens (tail dropped), each scored independently on its "
                  f"{seq_len - 1} next-token predictions; ppl = exp(mean NLL), "
                  f"{_numerics(model)}"),
        extra={"windows": int(windows.shape[0]), "seq_len": seq_len, "mean_nll": mean_nll},
        wall_s=time.perf_counter() - t0)


def _numerics(model: Model) -> str:
    if model.runtime != "torch":
        return model.module.describe()
    return str(next(model.module.parameters()).dtype).replace("torch.", "")
