"""lm-evaluation-harness over an exported model run in its own runtime (GGUF in llama.cpp, a causal
ONNX graph in ONNX Runtime): the harness's model interface answered from the runtime's logits.

lm-eval's HFLM needs a transformers module; an export is not one, so this is lm-eval's
`TemplateLM` (which turns (context, continuation) strings into token ids) with the three calls it
leaves to a backend, computed the way HFLM computes them so that a PyTorch model and its export
are scored on the same token ids:
- tokens: the tokenizer's own special-token rule (HFLM's default: BOS where the tokenizer adds
  one), a string that already starts with BOS not given a second; an empty context is the BOS
  (else EOS) token;
- log-likelihood of a continuation: one forward of context + continuation (left-truncated to the
  model's length plus one, the last token not fed), log-softmax of the logits at the
  continuation's positions, summed; "greedy" when every continuation token is the argmax;
- rolling log-likelihood (perplexity tasks): lm-eval's own disjoint rolling windows;
- generation: the runtime's greedy `generate`, cut at the task's stop strings (llama.cpp;
  the ONNX graph has no KV cache and refuses).
"""
from __future__ import annotations

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import has_bos_prefix
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from ..errors import UnsupportedModelError


class RuntimeLM(TemplateLM):
    """The harness's view of a `Model` whose module is a runtime adapter (runtime/)."""

    def __init__(self, model, max_length: int | None = None):
        super().__init__()
        self.model, self.tokenizer = model, model.tokenizer
        self.max_length = max_length or model.arch.max_positions

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **_) -> list[int]:
        kw = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        if add_special_tokens is None and has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            kw["add_special_tokens"] = False
        return self.tokenizer.encode(string, **kw)

    def _continuation_logprobs(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        if not continuation or len(continuation) > self.max_length:  # HFLM asserts the same
            raise UnsupportedModelError(f"an lm-eval request with {len(continuation)} continuation tokens; "
                                        f"1 to {self.max_length} are scored")
        ids = (context + continuation)[-(self.max_length + 1):]
        n = len(continuation)
        logits = self.model.module(input_ids=torch.tensor([ids[:-1]])).logits[0, -n:].float()
        logp = torch.log_softmax(logits, dim=-1)
        target = torch.tensor(continuation[-n:])
        return float(logp.gather(1, target[:, None]).sum()), bool((logp.argmax(-1) == target).all())

    def _longest(self, lengths) -> None:
        """llama.cpp opens a context per length bucket: one of the longest request serves them all."""
        if hasattr(self.model.module, "min_ctx"):
            self.model.module.min_ctx = min(self.max_length, max(lengths, default=0))

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **_) -> list[tuple[float, bool]]:
        self._longest(len(c) + len(x) for _, c, x in requests)
        out = []
        for strings, context, continuation in requests:
            out.append(self._continuation_logprobs(context, continuation))
            self.cache_hook.add_partial("loglikelihood", strings, out[-1])
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        per_text = [[(list(ctx), list(cont)) for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(
            token_list=self.tok_encode(req.args[0]), prefix_token=self.prefix_token_id,
            max_seq_len=self.max_length, context_len=1))] for req in requests]
        self._longest(len(c) + len(x) for windows in per_text for c, x in windows)
        return [sum(self._continuation_logprobs(c, x)[0] for c, x in windows) for windows in per_text]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        module = self.model.module
        if self.model.runtime != "llama.cpp":
            raise UnsupportedModelError(f"lm-eval generation tasks need a runtime that decodes; {self.model.runtime} "
                                        "runs the exported graph without a KV cache: use log-likelihood tasks, "
                                        "or the GGUF / PyTorch model")
        texts = []
        for req in requests:
            context, kwargs = req.args
            eot = [self.tokenizer.decode([self.eot_token_id])] if self.eot_token_id is not None else []
            until = kwargs.get("until") or eot
            until = [until] if isinstance(until, str) else list(until)
            ids = self.tok_encode(context)
            max_new = int(kwargs.get("max_gen_toks", 256))
            ids = ids[-max(1, self.max_length - max_new):]
            new = module.generate(torch.tensor([ids]), max_new_tokens=max_new,
                                  eos_token_id=self.eot_token_id)[0, len(ids):].tolist()
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            for stop in until:
                text = text.split(stop)[0] if stop else text
            texts.append(text)
            self.cache_hook.add_partial("generate_until", (context, kwargs), text)
        return texts
