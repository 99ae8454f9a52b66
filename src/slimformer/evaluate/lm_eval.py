"""lm-evaluation-harness tasks on any causal LM slimformer loads, compressed ones included.

The loaded module (QuantLinear, trimmed blocks and all) and its tokenizer are handed to
lm-eval's own HF wrapper (`HFLM(pretrained=module, tokenizer=...)`), so the harness computes
every log-likelihood through slimformer's kernels and its task code scores them. Tasks:
- `lm-eval:sst2-bundled`: runs offline on the bundled SST-2 dev split (data/sets/sst2, its
  SOURCE.md gives the license), zero-shot, with lm-eval's own GLUE SST-2 prompt and choices
  ("<sentence>\\nQuestion: Is this sentence positive or negative?\\nAnswer:", " negative" /
  " positive"), metric acc;
- any task name of lm-eval's registry (`lm-eval:hellaswag,arc_easy`): its data comes from the
  Hugging Face hub, so it needs a connection the first time (then the datasets cache).
A GGUF export runs in llama.cpp and a causal ONNX export in ONNX Runtime behind the same tasks
(lm_eval_runtime.py: the harness's calls answered from the runtime's logits, tokenized as HFLM does).
"""
from __future__ import annotations

import functools
import time

from ..data import resolve_data
from ..errors import MissingDependencyError, UnsupportedModelError
from ..model import Model
from ..results import EvalResult

PREFIX = "lm-eval:"
BUNDLED = {"sst2-bundled": ("sst2", "dev")}


def _bundled(name: str) -> dict:
    data, split = BUNDLED[name]
    return {"task": name, "dataset_path": "csv",
            "dataset_kwargs": {"data_files": {"validation": str(resolve_data(data, split))}, "delimiter": "\t"},
            "validation_split": "validation", "output_type": "multiple_choice",
            "doc_to_text": "{{sentence.strip()}}\nQuestion: Is this sentence positive or negative?\nAnswer:",
            "doc_to_target": "label", "doc_to_choice": ["negative", "positive"],
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}


@functools.lru_cache(maxsize=2)
def _task_manager(with_defaults: bool):
    """lm-eval's task index, built once per process: indexing its thousands of task files takes
    seconds, and the bundled tasks (configs given whole) need none of it."""
    from lm_eval.tasks import TaskManager
    return TaskManager(include_defaults=with_defaults)


def harness_model(model: Model, batch_size: int = 1):
    """lm-eval's HFLM over the loaded module: what the harness calls for log-likelihoods."""
    try:
        import lm_eval  # noqa: F401
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise MissingDependencyError("lm-eval tasks need lm-evaluation-harness: pip install "
                                     "'slimformer[eval]'") from None
    if not model.is_causal:
        raise UnsupportedModelError(f"lm-eval tasks score causal LMs; {model.name} is an encoder")
    if model.runtime != "torch":  # an export in its runtime: its logits, HFLM's scoring rules
        from .lm_eval_runtime import RuntimeLM
        return RuntimeLM(model)
    return HFLM(pretrained=model.module, tokenizer=model.tokenizer, device="cpu", batch_size=batch_size,
                max_length=model.arch.max_positions)


def lm_eval_tasks(model: Model, task: str, limit: int | None = None, batch_size: int | None = None) -> EvalResult:
    """`task` is "lm-eval:NAME[,NAME...]"; the value is the first task's first metric, every
    task's metrics are in `extra`."""
    names = [n.strip() for n in task[len(PREFIX):].split(",") if n.strip()]
    if not names:
        raise UnsupportedModelError("name the lm-eval tasks: --task lm-eval:sst2-bundled (offline) or lm-eval:hellaswag")
    t0 = time.perf_counter()
    lm = harness_model(model, batch_size or 1)
    from lm_eval import simple_evaluate
    hub = any(n not in BUNDLED for n in names)
    manager = _task_manager(hub)
    known = set(manager.all_tasks) if hub else set()
    unknown = [n for n in names if n not in BUNDLED and n not in known]
    if unknown:
        raise UnsupportedModelError(f"lm-eval has no task {', '.join(unknown)}; bundled (offline): "
                                    f"{', '.join(BUNDLED)}; others: `lm_eval ls tasks`")
    tasks = [_bundled(n) if n in BUNDLED else n for n in names]
    try:
        out = simple_evaluate(model=lm, tasks=tasks, limit=limit, log_samples=False, bootstrap_iters=0,
                              task_manager=manager)
    except (ConnectionError, OSError) as e:  # a hub dataset, offline
        raise UnsupportedModelError(f"lm-eval could not fetch the data of {', '.join(names)} "
                                    f"({str(e).splitlines()[0][:200]}); offline, only "
                                    f"{', '.join(PREFIX + n for n in BUNDLED)} runs") from None
    results, directions = out["results"], out.get("higher_is_better", {})
    metrics = {n: {(k.split(",")[0] if k.endswith(",none") else k.replace(",", "/")): v
                   for k, v in results[n].items()  # "acc,none": metric, filter
                   if "," in k and isinstance(v, (int, float)) and "stderr" not in k}
               for n in names}
    first = names[0]
    if not metrics[first]:
        raise UnsupportedModelError(f"lm-eval task {first} reported no numeric metric")
    metric, value = next(iter(metrics[first].items()))
    higher = bool(directions.get(first, {}).get(metric.split("/")[0], True))
    n_items = sum(v.get("effective", v.get("original", 0)) for v in (out.get("n-samples") or {}).values()) or 0
    return EvalResult(task=task, model=model.name, metric=f"{first} {metric}", value=float(value),
                      higher_is_better=higher, data=",".join(names), split=None, n=int(n_items),
                      protocol=f"lm-evaluation-harness {_version()} ({', '.join(names)}"
                               f"{f', limit {limit}' if limit else ''}; HFLM over the loaded module, batch "
                               f"{batch_size or 1})",
                      extra={"lm_eval": metrics}, wall_s=time.perf_counter() - t0)


def _version() -> str:
    from importlib.metadata import version
    return version("lm_eval")
