"""lm-evaluation-harness on slimformer's models (evaluate/lm_eval.py): the harness's
log-likelihoods are slimformer's own next-token log-probabilities, and the bundled offline task
runs through `slimformer eval`."""
from __future__ import annotations

import copy
import json

import lm_eval  # noqa: F401  (the eval extra: missing, the module fails, never skips)
import pytest
import torch
from lm_eval.api.instance import Instance

from slimformer import evaluate
from slimformer.cli import main
from slimformer.errors import UnsupportedModelError
from slimformer.evaluate.lm_eval import harness_model
from slimformer.quant import QuantizeConfig, quantize_model

PAIRS = [("The capital of France is", " Paris and it is large"),
         ("tokens tokens", " tokens a b c"), ("x", " y z")]


def _own_loglikelihood(model, context: str, continuation: str) -> float:
    """sum log p(continuation tokens | everything before), from the module's logits (PyTorch or an
    export's runtime adapter), by hand."""
    tok = model.tokenizer
    ctx = tok(context, add_special_tokens=False).input_ids
    whole = tok(context + continuation, add_special_tokens=False).input_ids
    cont = whole[len(ctx):]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model.module(input_ids=ids).logits.double(), -1)[0]
    return float(sum(logp[len(ctx) - 1 + i, t] for i, t in enumerate(cont)))


@pytest.mark.parametrize("quantized", [False, True])
def test_harness_loglikelihoods_are_slimformers_nll(tiny, quantized):
    model = copy.deepcopy(tiny["llama"])
    if quantized:  # the harness runs the compressed module itself (int8 kernels)
        quantize_model(model, QuantizeConfig(bits=8, activations="dynamic"), {"samples": 2, "seq_len": 16},
                       progress=False)
    lm = harness_model(model)
    reqs = [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(PAIRS)]
    got = [ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True)]
    want = [_own_loglikelihood(model, c, x) for c, x in PAIRS]
    assert got == pytest.approx(want, abs=2e-4)


def test_bundled_sst2_task_runs_offline_through_the_cli(tiny, tiny_dir, tmp_path, capsys):
    js = tmp_path / "e.json"
    assert main(["eval", str(tiny_dir["llama"]), "--task", "lm-eval:sst2-bundled", "--limit", "8",
                 "--json", str(js)]) == 0
    r = json.loads(js.read_text())
    assert r["metric"] == "sst2-bundled acc" and r["n"] == 8 and r["higher_is_better"]
    assert "lm-evaluation-harness" in r["protocol"]
    # the accuracy by hand: the first 8 dev rows, the prompt, the likelier of " negative" / " positive"
    from slimformer.data import resolve_data
    rows = [line.rstrip("\n").split("\t") for line in resolve_data("sst2", "dev").read_text().splitlines()[1:9]]
    right = 0
    for sentence, label in rows:
        prompt = f"{sentence.strip()}\nQuestion: Is this sentence positive or negative?\nAnswer:"
        lls = [_own_loglikelihood(tiny["llama"], prompt, " " + c) for c in ("negative", "positive")]
        right += int(max(range(2), key=lambda i: lls[i]) == int(label))
    assert r["value"] == pytest.approx(right / 8)


def test_encoders_and_unknown_tasks_are_one_line_errors(tiny):
    with pytest.raises(UnsupportedModelError, match="score causal LMs"):
        evaluate(tiny["bert"], "lm-eval:sst2-bundled", limit=2)
    with pytest.raises(UnsupportedModelError, match="no task no_such_task; bundled"):
        evaluate(tiny["llama"], "lm-eval:no_such_task", limit=2)


def test_compress_scores_original_and_compressed_on_the_same_lm_eval_items(tiny, tmp_path):
    from slimformer import compress
    from slimformer.errors import RecipeError
    from slimformer.recipe import parse_recipe
    recipe = {"stages": [{"quantize": {"bits": 8, "activations": "dynamic"}}], "calibration": {"samples": 2, "seq_len": 16},
              "evaluate": {"task": "lm-eval:sst2-bundled", "limit": 6, "fidelity": False},
              "bench": {"repeats": 1, "warmup": 0, "batch_sizes": [1], "seq_lens": [16], "throughput_items": 2,
                        "throughput_seq_len": 32, "throughput_passes": 1, "decode_new_tokens": 2,
                        "decode_prompt": 8, "decode_repeats": 1}}
    r = compress(tiny["llama"], recipe, out=tmp_path / "out", progress=False)
    q0, q1 = r.quality["original"], r.quality["compressed"]
    assert q0["metric"] == q1["metric"] == "sst2-bundled acc" and q0["n"] == q1["n"] == 6
    assert "sst2-bundled acc" in (tmp_path / "out" / "report.md").read_text()
    with pytest.raises(RecipeError, match="the openvino export is for encoders"):
        parse_recipe({**recipe, "export": {"format": "openvino"}})
    # a GGUF export is scored on the same items in llama.cpp
    r = compress(tiny["llama"], {**recipe, "stages": [], "export": {"format": "gguf", "type": "f32"}},
                 out=tmp_path / "gguf", progress=False)
    qe = r.export["quality"]
    assert qe["metric"] == "sst2-bundled acc" and qe["n"] == 6 and "llama.cpp" in qe["model"]
    assert qe["value"] == r.quality["original"]["value"]  # fp32 in llama.cpp: the same choices
    with pytest.raises(RecipeError, match="applies to lm-eval tasks only"):
        parse_recipe({"evaluate": {"task": "ppl", "limit": 3}})


@pytest.fixture(scope="module")
def exports(tiny, tmp_path_factory):
    """The tiny llama as an F32 GGUF (llama.cpp) and an ONNX graph (ONNX Runtime)."""
    from slimformer.export import export
    from slimformer.runtime import open_model
    root = tmp_path_factory.mktemp("lm_eval_exports")
    export(tiny["llama"], "gguf", root / "m.gguf", dtype="f32")
    export(tiny["llama"], "onnx", root / "onnx")
    return {"llama.cpp": open_model(root / "m.gguf"), "onnxruntime": open_model(root / "onnx")}


@pytest.mark.parametrize("runtime", ["llama.cpp", "onnxruntime"])
def test_harness_scores_an_export_in_its_runtime_like_pytorch(tiny, exports, runtime):
    """The harness's log-likelihoods of a GGUF in llama.cpp / an ONNX graph in ONNX Runtime are that
    runtime's own (by hand from its logits) and, the export being fp32, PyTorch's; the rolling
    (perplexity) request is the sum over every token after the prefix token."""
    model = exports[runtime]
    assert model.runtime == runtime
    lm = harness_model(model)
    reqs = [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(PAIRS)]
    got = [ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True)]
    assert got == pytest.approx([_own_loglikelihood(model, c, x) for c, x in PAIRS], abs=1e-4)
    assert got == pytest.approx([_own_loglikelihood(tiny["llama"], c, x) for c, x in PAIRS], abs=2e-3)
    text = "tokens a b c tokens x y z tokens"
    ids = model.tokenizer(text, add_special_tokens=False).input_ids
    prefix = lm.prefix_token_id
    with torch.no_grad():
        logp = torch.log_softmax(tiny["llama"].module(input_ids=torch.tensor([[prefix] + ids[:-1]])).logits.double(), -1)[0]
    want = float(sum(logp[i, t] for i, t in enumerate(ids)))
    roll = lm.loglikelihood_rolling([Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)],
                                    disable_tqdm=True)
    assert roll[0] == pytest.approx(want, abs=2e-3)


def test_bundled_task_on_a_gguf_equals_pytorch_and_onnx_refuses_generation(tiny, exports):
    a = evaluate(tiny["llama"], "lm-eval:sst2-bundled", limit=8)
    b = evaluate(exports["llama.cpp"], "lm-eval:sst2-bundled", limit=8)
    assert b.n == a.n == 8 and b.value == a.value and b.extra == a.extra
    lm = harness_model(exports["llama.cpp"])
    prompt = "tokens a b"
    gen = Instance(request_type="generate_until", doc={}, arguments=(prompt, {"until": ["\n\n"], "max_gen_toks": 6}), idx=0)
    ids = tiny["llama"].tokenizer(prompt, add_special_tokens=False).input_ids
    greedy = tiny["llama"].module.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, pad_token_id=0)[0, len(ids):]
    want = tiny["llama"].tokenizer.decode(greedy, skip_special_tokens=True).split("\n\n")[0]
    assert lm.generate_until([gen], disable_tqdm=True) == [want]
    with pytest.raises(UnsupportedModelError, match="without a KV cache"):
        harness_model(exports["onnxruntime"]).generate_until([gen], disable_tqdm=True)
