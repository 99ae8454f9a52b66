"""OpenVINO IR export (export/openvino.py) and the OpenVINO runtime adapter (runtime/openvino.py)."""
from __future__ import annotations

import copy
import json

import numpy as np
import openvino as ov  # a dependency of the export extra: missing, the module fails, never skips
import pytest
import torch

from slimformer import compress
from slimformer.cli import main
from slimformer.errors import UnsupportedModelError
from slimformer.evaluate.embed import encode
from slimformer.export import export
from slimformer.model import get_module
from slimformer.quant import QuantizeConfig, quantize_model
from slimformer.runtime import open_model, runtime_of
from slimformer.trim import TrimConfig, trim_model

CAL = {"samples": 4, "seq_len": 32}
SENTENCES = ["a short one", "the quick brown fox jumps over the lazy dog", "tokens " * 40, "x"]


def _min_cosine(model, folder) -> float:
    o = open_model(str(folder))
    assert o.runtime == "openvino"
    return float(torch.nn.functional.cosine_similarity(encode(model, SENTENCES), encode(o, SENTENCES)).min())


def _ir_weights(xml, names) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (int8 codes, scales) as the IR stores them: the codes constant keeps the ONNX
    initializer's name; its scales are the constant the Multiply after the codes' Convert (and
    zero-point Subtract, if kept) takes."""
    ops = {op.get_friendly_name(): op for op in ov.Core().read_model(str(xml)).get_ops()}
    out = {}
    for name in names:
        codes = node = ops[f"{name}.qweight_t"]
        while node.get_type_name() != "Multiply":
            node = next(iter(node.output(0).get_target_inputs())).get_node()
        scale = [i.get_source_output().get_node() for i in node.inputs()
                 if i.get_source_output().get_node().get_type_name() == "Constant"]
        out[name] = codes.get_data(), scale[0].get_data()
    return out


def _fake_quantize_highs(xml) -> list[float]:
    """The upper bound of every FakeQuantize (a static activation grid's 127 * scale)."""
    highs = []
    for op in ov.Core().read_model(str(xml)).get_ops():
        if op.get_type_name() == "FakeQuantize":
            highs.append(float(op.input(2).get_source_output().get_node().get_data().reshape(-1)[0]))
    return highs


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_fp32_encoders_match_pytorch(tiny, tmp_path, family):
    res = export(tiny[family], "openvino", tmp_path / "o")
    assert (tmp_path / "o" / "model.xml").is_file() and (tmp_path / "o" / "model.bin").is_file()
    assert not list((tmp_path / "o").glob("*.onnx*"))  # the staging graph is not left behind
    assert res.details["linears"] == {"fp32": len(tiny[family].arch.linears)}
    assert runtime_of(tmp_path / "o") == "openvino" and runtime_of(tmp_path / "o" / "model.xml") == "openvino"
    assert _min_cosine(tiny[family], tmp_path / "o") >= 0.9999


@pytest.mark.parametrize("cfg,written", [
    (dict(method="gptq", activations="static", smoothquant=0.5), "w8a8_static"),
    (dict(activations="dynamic", granularity="tensor"), "w8a8_dynamic"),
    (dict(method="gptq", activations="dynamic", smoothquant=0.5), "w8a8_dynamic")])
def test_w8a8_keeps_slimformers_codes_and_matches(tiny, tmp_path, cfg, written):
    model = copy.deepcopy(tiny["bert"])
    quantize_model(model, QuantizeConfig(bits=8, **cfg), CAL, progress=False)
    res = export(model, "openvino", tmp_path / "o")
    assert res.details["linears"] == {written: len(model.arch.linears)}
    xml = tmp_path / "o" / "model.xml"
    highs = _fake_quantize_highs(xml)
    # one FakeQuantize per distinct static input (q / k / v read one, OpenVINO merges equal ones)
    assert bool(highs) == (written == "w8a8_static")
    for name, (codes, scales) in _ir_weights(xml, model.arch.linears).items():
        mod = get_module(model.module, name)
        assert codes.dtype == np.int8 and np.array_equal(codes, mod.codes().t().numpy())
        assert np.array_equal(scales.reshape(-1), mod.scales[:, 0].numpy())
        if written == "w8a8_static":
            assert any(h == pytest.approx(127 * float(mod.act_scale), rel=1e-6) for h in highs)
    meta = json.loads((tmp_path / "o" / "slimformer-export.json").read_text())
    assert meta["format"] == "openvino" and meta["inference_precision"] == "f32"
    # int8 activations rounded by OpenVINO's kernels, not slimformer's: equal up to that rounding
    assert _min_cosine(model, tmp_path / "o") >= 0.999


def test_static_activations_are_quantized_in_the_runtime(tiny, tmp_path):
    """The static grid really runs in OpenVINO: its output is slimformer's quantized model's, and
    measurably not the float model's (a runtime that dropped the Q/DQ pairs would give the latter)."""
    model = copy.deepcopy(tiny["bert"])
    quantize_model(model, QuantizeConfig(bits=8, activations="static"), CAL, progress=False)
    for mod in (get_module(model.module, n) for n in model.arch.linears):
        mod.act_scale.mul_(8.0)  # a coarse grid: quantization error far above float rounding
        mod._cache = {}
    export(model, "openvino", tmp_path / "o")
    got = encode(open_model(tmp_path / "o"), SENTENCES)
    want = encode(model, SENTENCES)
    simulated = copy.deepcopy(model)
    for mod in (get_module(simulated.module, n) for n in simulated.arch.linears):
        mod.unlink()  # run alone, not through its q/k/v input group
        mod.kernel, mod.act, mod._cache = "simulated", "none", {}  # the same codes, float activations
    unquantized = encode(simulated, SENTENCES)
    err_q = (got - want).norm(dim=1).max()
    err_f = (got - unquantized).norm(dim=1).max()
    assert err_q < 0.25 * err_f


def test_trimmed_unequal_blocks_and_pooling(tiny, tmp_path):
    model = copy.deepcopy(tiny["bert"])
    trim_model(model, TrimConfig(heads=0.5, ffn=0.5, score="activation", allocation="global"), CAL, progress=False)
    model.pooling.normalize = True
    export(model, "openvino", tmp_path / "o")
    assert _min_cosine(model, tmp_path / "o") >= 0.9999


def test_refuses_decoders_and_leaves_nothing(tiny, tmp_path):
    with pytest.raises(UnsupportedModelError, match="OpenVINO export writes sentence encoders; 'llama'"):
        export(tiny["llama"], "openvino", tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_recipe_export_and_cli(tiny, tiny_dir, tmp_path, capsys):
    recipe = {"stages": [{"quantize": {"bits": 8, "activations": "static"}}], "calibration": CAL,
              "evaluate": {"fidelity": False},
              "bench": {"repeats": 1, "warmup": 0, "batch_sizes": [1], "seq_lens": [16], "throughput_items": 2,
                        "throughput_seq_len": 32, "throughput_passes": 1},
              "export": {"format": "openvino"}}
    r = compress(tiny["bert"], recipe, out=tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "openvino" / "model.xml").is_file() and r.export["path"] == "openvino"
    saved = json.loads((tmp_path / "out" / "results.json").read_text())["export"]
    assert abs(saved["quality"]["value"] - r.quality["compressed"]["value"]) < 0.5
    assert saved["quality"]["model"].endswith("as openvino in openvino")
    assert main(["export", str(tiny_dir["bert"]), "--format", "openvino", "--out", str(tmp_path / "cli")]) == 0
    assert "openvino" in capsys.readouterr().out
    assert main(["export", str(tiny_dir["bert"]), "--format", "openvino", "--out", str(tmp_path / "cli2"),
                 "--type", "q8_0"]) == 2
    assert not (tmp_path / "cli2").exists()
