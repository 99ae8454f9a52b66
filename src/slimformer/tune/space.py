"""The search space: trim amounts and quantization formats with a real kernel in the target
runtime, drawn from an Optuna trial and written as a recipe `slimformer compress` runs as it is.

Amounts are counts derived from the model's own shapes (a quarter of its heads, a third of its
blocks), so the same space fits a 4-head test model and a 32-head one. Recovery is not part of
the one-shot space: the finalists get it (search.py), so its cost is paid only where it can move
the front.
"""
from __future__ import annotations

from ..model import Model

FFN_FRACTIONS = (0.0, 0.25, 0.5, 0.625, 0.75)

# Quantization a runtime executes on integer kernels (a simulated format would not be faster)
QUANT = {
    ("encoder", "torch"): ("none", "w8a8"),
    ("encoder", "onnxruntime"): ("none", "w8a8"),
    # OpenVINO runs static activations as FakeQuantize int8 kernels, dynamic ones through its own
    # dynamic quantization of int8 weights (export/openvino.py): both are real kernels there
    ("encoder", "openvino"): ("none", "w8a8", "w8a8_static"),
    ("causal", "torch"): ("none", "w8a8", "int4"),
    ("causal", "llama.cpp"): ("q8_0", "q4_0"),
}
QUANT_STAGES = {
    "w8a8": {"method": "gptq", "bits": 8, "activations": "dynamic", "smoothquant": 0.5},
    "w8a8_static": {"method": "gptq", "bits": 8, "activations": "static", "smoothquant": 0.5},
    "int4": {"method": "gptq", "bits": 4, "group_size": 64, "symmetric": False},
    "q8_0": {"method": "gptq", "bits": 8},  # per-channel int8 rows go into Q8_0 blocks bit for bit
    "q4_0": {"method": "gptq", "bits": 4, "group_size": 32, "symmetric": True, "full_range": True,
             "act_order": True},  # Q4_0's own grid (recipes/export-gguf-q4_0.yaml)
}


def _counts(n: int, fractions: tuple[float, ...]) -> list[int]:
    return sorted({int(round(n * f)) for f in fractions if int(round(n * f)) < n})


def choices(model: Model, runtime: str) -> dict[str, list]:
    """Parameter -> the values the search may take, for this model and runtime."""
    a = model.arch
    blk = a.blocks[0]
    space: dict[str, list] = {}
    if model.is_causal and blk.attn.n_kv_heads and blk.attn.n_kv_heads < blk.attn.n_heads:
        space["kv_heads"] = list(range(0, blk.attn.n_kv_heads))  # KV groups removed (GQA keeps ratios)
    else:
        space["heads"] = _counts(blk.attn.n_heads, (0.0, 0.25, 0.5, 0.75))
    space["ffn"] = list(FFN_FRACTIONS)
    space["layers"] = _counts(a.n_layers, (0.0, 1 / 6, 1 / 3) if model.is_causal else (0.0, 1 / 6, 1 / 3, 1 / 2))
    space["quant"] = list(QUANT[(model.kind, runtime)])
    return space


def propose(trial, space: dict[str, list]) -> dict:
    return {name: trial.suggest_categorical(name, values) for name, values in space.items()}


def recipe_for(params: dict, model: Model, runtime: str, threads: int, recover: dict | None = None) -> dict:
    """A compress recipe (as a dict) for one point; `recover` adds distillation before quantizing
    (recovering first and quantizing after beat QAT on MiniLM W8A8; README)."""
    trim = {k: params[k] for k in ("heads", "kv_heads", "ffn", "layers") if params.get(k)}
    stages = []
    if trim:
        trim.setdefault("score", "fluctuation")
        stages.append({"trim": trim})
    if recover is not None and trim:
        stages.append({"recover": recover})
    quant = params.get("quant", "none")
    if quant in QUANT_STAGES:
        stages.append({"quantize": dict(QUANT_STAGES[quant])})
    causal = model.is_causal
    seq = min(512, model.arch.max_positions)
    if recover is not None and causal:
        recover = {**recover, "seq_len": min(recover["seq_len"], seq)}
    recipe = {
        "calibration": {"samples": 16, "seq_len": seq} if causal else {"samples": 512},
        "stages": stages,
        "evaluate": {"split": "test", "fidelity": not causal,
                     **({"max_windows": 64, "seq_len": min(1024, model.arch.max_positions)} if causal else {})},
        "bench": ({"threads": threads, "repeats": 3, "batch_sizes": [1], "seq_lens": [min(128, seq)],
                   "decode_new_tokens": 64, "throughput_seq_len": seq}
                  if causal else {"threads": threads, "repeats": 5, "batch_sizes": [1, 32], "seq_lens": [128]}),
    }
    if runtime == "onnxruntime":
        recipe["export"] = {"format": "onnx"}
    elif runtime == "openvino":
        recipe["export"] = {"format": "openvino"}
    elif runtime == "llama.cpp":
        recipe["export"] = {"format": "gguf", "type": "q8_0"}
    return recipe


def recover_stage(causal: bool, steps: int, minutes: float) -> dict:
    """Distillation settings of the shipped recipes (recover-encoder-trim-w8a8.yaml,
    export-decoder-trim-gguf.yaml), stopped by the finalist's share of the budget."""
    minutes = max(round(minutes, 2), 0.1)
    if causal:
        return {"steps": steps, "lr": 1.0e-4, "batch_size": 4, "micro_batch": 2, "seq_len": 512,
                "eval_every": max(steps // 10, 1), "max_minutes": minutes}
    return {"steps": steps, "lr": 2.0e-4, "batch_size": 32, "eval_every": max(steps // 10, 1),
            "max_minutes": minutes}


def is_identity(params: dict) -> bool:
    return params.get("quant", "none") == "none" and not any(params.get(k) for k in ("heads", "kv_heads", "ffn", "layers"))


def describe(params: dict) -> str:
    parts = [f"{k} {params[k]}" for k in ("heads", "kv_heads", "ffn", "layers") if params.get(k)]
    return ", ".join(parts + [params.get("quant", "none")]) if parts else params.get("quant", "none")
