"""Recipes: validated up front, unknown names and bad values are errors naming what fits."""
import dataclasses

import pytest

from slimformer.errors import RecipeError
from slimformer.recipe import load_recipe, parse_recipe
from slimformer.stages import STAGES, register_stage


def test_default_recipe_parses():
    r = load_recipe()
    assert [s.name for s in r.stages] == ["quantize"] and r.export.format == "hf" and r.bench.threads == 1
    assert r.stages[0].config.activations == "dynamic" and r.stages[0].config.bits == 8
    assert r.calibration.data is None  # per model kind: WikiText-2 windows or STS-B train sentences


@pytest.mark.parametrize("raw,match", [
    ({"stagez": []}, "unknown key 'stagez'; known keys: calibration"),
    ({"stages": [{"shrink": {}}]}, "unknown stage 'shrink'; known stages"),
    ({"stages": {"trim": {}}}, "must be a list"),
    ({"stages": [{"a": {}, "b": {}}]}, "one `name"),
    ({"calibration": {"samples": "many"}}, "samples must be an integer"),
    ({"calibration": {"samplez": 3}}, "unknown option 'samplez'; options: data, split"),
    ({"calibration": {"split": "test"}}, "must not use the test split"),
    ({"calibration": {"samples": 0}}, "samples >= 1"),
    ({"evaluate": {"task": "bleu"}}, "tasks: sts, ppl, fidelity"),
    ({"evaluate": {"fidelity": "yes"}}, "true or false"),
    ({"bench": {"repeats": 0}}, "repeats must be at least 1"),
    ({"bench": {"seq_lens": [128, "x"]}}, "list of integers"),
    ({"export": {"format": "tflite"}}, "formats: hf"),
    (["not", "a", "mapping"], "must be a mapping"),
])
def test_recipe_errors(raw, match):
    with pytest.raises(RecipeError, match=match):
        parse_recipe(raw)


def test_recipe_file_errors(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [\n  - trim: {\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_recipe(empty).stages == []


def test_registered_stage_is_validated_with_its_config(monkeypatch):
    @dataclasses.dataclass
    class ScaleConfig:
        factor: float = 1.0

    monkeypatch.setitem(STAGES, "scale", None)  # placeholder removed by monkeypatch at teardown
    register_stage("scale", ScaleConfig)(lambda model, cfg, ctx: (model, {}))
    r = parse_recipe({"stages": [{"scale": {"factor": 2}}, "scale"]})
    assert [s.config.factor for s in r.stages] == [2.0, 1.0]
    with pytest.raises(RecipeError, match="options: factor"):
        parse_recipe({"stages": [{"scale": {"fctor": 2}}]})


@pytest.mark.parametrize("stages,match", [
    (["quantize", "prune"], r"stage 2 \(prune\) comes after quantize, which leaves no dense weights to prune; "
                            r"order the stages trim / prune / quantize / recover$"),
    (["prune", "quantize", "recover", {"trim": {"ffn": 0.5}}], r"stage 4 \(trim\) comes after quantize"),
    (["quantize", "quantize"], r"stage 2 \(quantize\) comes after quantize"),
    (["quantize", {"recover": {"lora": 8}}], r"stage 2 \(recover with lora\) comes after quantize.*lora: 0"),
])
def test_stage_order_is_checked_when_the_recipe_is_parsed(stages, match):
    with pytest.raises(RecipeError, match=match):
        parse_recipe({"stages": stages})


def test_stage_orders_that_work_parse():
    for stages in (["trim", "prune", "quantize", "recover"], ["prune", "trim", "recover", "quantize"],
                   ["quantize", "recover", "recover"], [{"recover": {"lora": 8}}, "quantize"]):
        stages = [{"trim": {"ffn": 0.5}} if s == "trim" else s for s in stages]
        assert [next(iter(s)) if isinstance(s, dict) else s for s in stages] == \
            [e.name for e in parse_recipe({"stages": stages}).stages]


def test_prune_after_quantize_fails_before_any_work(tiny, tmp_path):
    from slimformer import compress
    recipe = {"stages": [{"quantize": {"bits": 8}}, {"prune": {"method": "magnitude", "sparsity": 0.5}}]}
    with pytest.raises(RecipeError, match="comes after quantize"):
        compress(tiny["llama"], recipe, out=tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []
