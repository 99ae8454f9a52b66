"""compressed-tensors both ways: slimformer's quantized models load in plain transformers (with the
compressed-tensors package) with the same outputs, and a compressed-tensors checkpoint loads with
slimformer.load onto QuantLinear layers holding exactly the stored codes."""
from __future__ import annotations

import copy
import json

import compressed_tensors  # noqa: F401  (the export extra: missing, the module fails, never skips)
import pytest
import torch
import transformers as T

from slimformer import load
from slimformer.errors import UnsupportedModelError
from slimformer.export import export
from slimformer.model import get_module
from slimformer.nn import QuantLinear
from slimformer.quant import QuantizeConfig, quantize_model

CAL = {"samples": 4, "seq_len": 32}
IDS = torch.randint(5, 380, (2, 20), generator=torch.Generator().manual_seed(0))

SCHEMES = [  # slimformer config -> (compressed-tensors format, activation strategy or None)
    (dict(method="gptq", bits=4, group_size=32, symmetric=True), "pack-quantized", None),
    (dict(bits=4, group_size=32, symmetric=False), "pack-quantized", None),
    (dict(method="gptq", bits=8), "pack-quantized", None),  # W8A16 per channel
    (dict(method="gptq", bits=8, activations="dynamic", granularity="token"), "int-quantized", "token"),
    (dict(bits=8, activations="static"), "int-quantized", "tensor"),
]


def _simulated(model):
    """The same codes computed in fp32 (dequantized weights, activations fake-quantized on
    slimformer's grid): what transformers' decompressed model computes."""
    sim = copy.deepcopy(model)
    for mod in sim.module.modules():
        if isinstance(mod, QuantLinear):  # the head too, when quantized
            mod.unlink()
            mod.kernel, mod._cache = "simulated", {}
    return sim


def _logits(module):
    with torch.no_grad():
        return module(input_ids=IDS).logits


@pytest.mark.parametrize("cfg,fmt,acts", SCHEMES)
def test_slimformer_quantized_model_loads_in_transformers(tiny, tmp_path, cfg, fmt, acts):
    model = copy.deepcopy(tiny["llama"])
    quantize_model(model, QuantizeConfig(**cfg), CAL, progress=False)
    res = export(model, "compressed-tensors", tmp_path / "ct")
    assert res.details["formats"] == [fmt] and res.details["layers"] == len(model.arch.linears)
    qc = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == fmt
    group = next(iter(qc["config_groups"].values()))
    assert group["weights"]["num_bits"] == cfg["bits"] and group["weights"]["symmetric"] == cfg.get("symmetric", True)
    assert (group["input_activations"] or {}).get("strategy") == acts
    hf = T.AutoModelForCausalLM.from_pretrained(tmp_path / "ct")  # plain transformers, CPU
    got = _logits(hf)  # the first forward decompresses the weights (the library's hook)
    for name in model.arch.linears:  # the decompressed weight is slimformer's dequantized one, exactly
        assert torch.equal(get_module(hf, name).weight.detach(), get_module(model.module, name).dequantized())
    sim = _simulated(model)
    want = _logits(sim.module)
    if acts != "token":  # static grid and weight-only: the same computation
        assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
        return
    # dynamic per token: transformers quantizes the activations with the library's asymmetric
    # per-token observer, whose range / zero-point arithmetic is not slimformer's to the last code:
    # far closer to slimformer's quantized model than to the same codes with float activations
    for name in sim.arch.linears:
        mod = get_module(sim.module, name)
        mod.act, mod._cache = "none", {}
    float_acts = _logits(sim.module)
    assert (got - want).abs().max() < 0.25 * (got - float_acts).abs().max()


@pytest.mark.parametrize("cfg,fmt,acts", SCHEMES)
def test_compressed_tensors_checkpoint_loads_on_slimformers_kernels(tiny, tmp_path, cfg, fmt, acts):
    model = copy.deepcopy(tiny["llama"])
    quantize_model(model, QuantizeConfig(**cfg), CAL, progress=False)
    export(model, "compressed-tensors", tmp_path / "ct")
    back = load(tmp_path / "ct")
    for name in model.arch.linears:
        a, b = get_module(model.module, name), get_module(back.module, name)
        assert isinstance(b, QuantLinear) and b.kernel == a.kernel and b.act == a.act and b.spec == a.spec
        assert torch.equal(b.codes(), a.codes()) and torch.equal(b.scales, a.scales) and torch.equal(b.zeros, a.zeros)
        if a.act == "static":
            assert float(b.act_scale) == float(a.act_scale)
    assert torch.allclose(_logits(back.module), _logits(model.module), atol=1e-5)


def test_what_compressed_tensors_cannot_describe_is_refused_and_nothing_written(tiny, tmp_path):
    q4_0 = copy.deepcopy(tiny["llama"])
    quantize_model(q4_0, QuantizeConfig(bits=4, group_size=32, symmetric=True, full_range=True), CAL, progress=False)
    with pytest.raises(UnsupportedModelError, match="full-range grid.*export it as hf"):
        export(q4_0, "compressed-tensors", tmp_path / "a")
    with pytest.raises(UnsupportedModelError, match="no quantized layer"):
        export(tiny["llama"], "compressed-tensors", tmp_path / "b")
    from slimformer.trim import TrimConfig, trim_model
    trimmed = copy.deepcopy(tiny["llama"])
    trim_model(trimmed, TrimConfig(ffn=0.25, score="magnitude"), CAL, progress=False)
    quantize_model(trimmed, QuantizeConfig(bits=8), CAL, progress=False)
    export(trimmed, "compressed-tensors", tmp_path / "ok")  # a uniform trim: the config states it
    trimmed.module.config.intermediate_size += 8  # a config that no longer states the FFN width
    with pytest.raises(UnsupportedModelError, match="trimmed shapes differ"):
        export(trimmed, "compressed-tensors", tmp_path / "c")
    assert not any((tmp_path / d).exists() for d in "abc") and (tmp_path / "ok" / "config.json").is_file()


def test_recipe_export_is_scored_from_the_written_folder(tiny, tmp_path):
    from slimformer import compress
    recipe = {"stages": [{"quantize": {"method": "gptq", "bits": 4, "group_size": 32}}], "calibration": CAL,
              "evaluate": {"max_windows": 2, "seq_len": 64, "fidelity": False},
              "bench": {"repeats": 1, "warmup": 0, "batch_sizes": [1], "seq_lens": [16], "throughput_items": 2,
                        "throughput_seq_len": 32, "throughput_passes": 1, "decode_new_tokens": 2,
                        "decode_prompt": 8, "decode_repeats": 1},
              "export": {"format": "compressed-tensors"}}
    r = compress(tiny["llama"], recipe, out=tmp_path / "out", progress=False)
    assert r.export["path"] == "compressed-tensors" and r.export["details"]["formats"] == ["pack-quantized"]
    # read back onto the same kernels: the same perplexity as the model compress produced
    assert r.export["quality"]["value"] == pytest.approx(r.quality["compressed"]["value"], rel=1e-6)


def test_biases_and_a_quantized_head_go_both_ways(tiny, tmp_path):
    """qwen2 (q/k/v biases), W4A16 with the untied LM head quantized too."""
    model = copy.deepcopy(tiny["qwen2"])
    quantize_model(model, QuantizeConfig(method="gptq", bits=4, group_size=32, lm_head=True), CAL, progress=False)
    names = [n for n, m in model.module.named_modules() if isinstance(m, QuantLinear)]
    assert "lm_head" in names and get_module(model.module, names[0]).bias is not None
    export(model, "compressed-tensors", tmp_path / "ct")
    hf = T.AutoModelForCausalLM.from_pretrained(tmp_path / "ct")
    assert torch.allclose(_logits(hf), _logits(_simulated(model).module), atol=1e-4)
    back = load(tmp_path / "ct")
    for name in names:
        a, b = get_module(model.module, name), get_module(back.module, name)
        assert torch.equal(b.codes(), a.codes()) and (a.bias is None or torch.equal(a.bias, b.bias))
    assert torch.allclose(_logits(back.module), _logits(model.module), atol=1e-5)


@pytest.mark.parametrize("quant,layout", [
    (dict(method="gptq", bits=4, group_size=32), "compressed-tensors"),
    (dict(bits=8, activations="dynamic"), "compressed-tensors"),
    (dict(bits=4, group_size=32, symmetric=True, full_range=True), "slimformer"),  # llama.cpp's Q4_0 rule
    (None, "hf")])
def test_compress_writes_model_as_compressed_tensors_whenever_it_can(tiny, tmp_path, quant, layout):
    """compress's model/ is compressed-tensors when the format describes every quantized layer
    (plain transformers loads it; slimformer.load reads back the same codes), slimformer's own
    layout otherwise with the reason in the report, a standard folder when nothing is compressed."""
    from slimformer import compress
    recipe = {"stages": [{"quantize": quant}] if quant else [], "calibration": CAL,
              "evaluate": {"max_windows": 1, "seq_len": 32, "fidelity": False},
              "bench": {"repeats": 1, "warmup": 0, "batch_sizes": [1], "seq_lens": [8], "throughput_items": 2,
                        "throughput_seq_len": 16, "throughput_passes": 1, "decode_new_tokens": 2,
                        "decode_prompt": 8, "decode_repeats": 1}}
    r = compress(tiny["llama"], recipe, out=tmp_path / "out", progress=False)
    folder = tmp_path / "out" / "model"
    assert r.layout["format"] == layout
    assert json.loads((tmp_path / "out" / "results.json").read_text())["layout"] == r.layout
    report = (tmp_path / "out" / "report.md").read_text()
    back = load(folder)
    assert back.log and back.log[0]["stage"] == "quantize" if quant else not back.log  # provenance kept
    config = json.loads((folder / "config.json").read_text())
    if layout == "slimformer":
        assert "full-range grid" in r.layout["why"] and "(not a standard format: model.layers.0.self_attn.q_proj: compressed-tensors cannot describe a full-range" in report
        assert "quantization_config" not in config
        with pytest.raises(OSError):
            T.AutoModelForCausalLM.from_pretrained(folder)
        return
    hf = T.AutoModelForCausalLM.from_pretrained(folder)  # plain transformers reads both others
    if layout == "hf":
        assert "quantization_config" not in config and "a standard Hugging Face folder" in report
        assert torch.equal(_logits(hf), _logits(tiny["llama"].module))
        return
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    assert "`model/` is compressed-tensors" in report and "vLLM" in report
    # slimformer reads the same codes back (compress's in-memory model is not returned: rebuild it)
    model = copy.deepcopy(tiny["llama"])
    quantize_model(model, QuantizeConfig(**quant), CAL, progress=False)
    for name in model.arch.linears:
        a, b = get_module(model.module, name), get_module(back.module, name)
        assert b.kernel == a.kernel and torch.equal(b.codes(), a.codes()) and torch.equal(b.scales, a.scales)
    assert torch.allclose(_logits(back.module), _logits(model.module), atol=1e-5)
