"""evaluate(model, task): quality of a model on real data, as an EvalResult."""
from __future__ import annotations

from ..data import read_pairs, read_sentences, read_text, resolve_data
from ..errors import ConfigValueError, UnsupportedModelError
from ..model import Model
from ..results import EvalResult
from .fidelity import embedding_fidelity, logit_fidelity
from .perplexity import perplexity
from .sts import sts

TASKS = ("sts", "ppl", "fidelity")


def default_task(model: Model) -> str:
    return "ppl" if model.is_causal else "sts"


def evaluate(model: Model, task: str | None = None, data: str | None = None, split: str = "test",
             reference: Model | None = None, seq_len: int = 1024, max_windows: int | None = None,
             batch_size: int | None = None, progress: bool = True, limit: int | None = None) -> EvalResult:
    """`task`: sts, ppl, fidelity, or "lm-eval:TASK[,TASK...]" (lm-evaluation-harness, lm_eval.py;
    `limit`: items per task)."""
    task = task or default_task(model)
    if task.startswith("lm-eval:"):
        from .lm_eval import lm_eval_tasks
        return lm_eval_tasks(model, task, limit=limit, batch_size=batch_size)
    if task not in TASKS:
        raise ConfigValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}, lm-eval:NAME")
    if task == "sts":
        if model.is_causal:
            raise UnsupportedModelError(f"sts needs a sentence encoder; {model.name} is a causal LM "
                                        "(use --task ppl or fidelity)")
        data = data or "stsb"
        return sts(model, read_pairs(resolve_data(data, split)), data=str(data), split=split,
                   batch_size=batch_size or 64)
    if task == "ppl":
        data = data or "wikitext2"
        return perplexity(model, read_text(resolve_data(data, split)), seq_len=seq_len,
                          max_windows=max_windows, batch_size=batch_size or 1, data=str(data),
                          split=split, progress=progress)
    if reference is None:
        raise ConfigValueError("fidelity needs a reference model: pass --reference MODEL")
    if model.is_causal:
        data = data or "wikitext2"
        return logit_fidelity(model, reference, read_text(resolve_data(data, split)), seq_len=seq_len,
                              max_windows=max_windows or 8, data=str(data), split=split, progress=progress)
    data = data or "stsb"
    return embedding_fidelity(model, reference, read_sentences(resolve_data(data, split)),
                              data=str(data), split=split, batch_size=batch_size or 64)


__all__ = ["TASKS", "evaluate", "default_task", "sts", "perplexity", "embedding_fidelity", "logit_fidelity"]
