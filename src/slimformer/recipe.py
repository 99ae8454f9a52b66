"""Recipes: YAML validated into config dataclasses. An unknown key, stage or value is an error
that names what is allowed, raised before any work starts."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .bench import BenchConfig
from .errors import RecipeError, SlimformerError
from .stages import STAGES, known_stages


@dataclass
class CalibrationConfig:
    """Defaults by model kind: causal LMs 64 windows of WikiText-2 validation text, encoders
    1024 STS-B train sentences (see data/calibration.py)."""
    data: str | None = None  # a bundled set or a file; never the test split
    split: str | None = None
    samples: int | None = None
    seq_len: int = 1024
    seed: int = 0
    dtype: str = "float32"  # block forwards in float32, or bfloat16 (statistics still fp32 / fp64)
    device: str = "auto"  # where block forwards and rewrites run: auto (CUDA when present), cpu, cuda


CALIBRATION_DTYPES = ("float32", "bfloat16")
CALIBRATION_DEVICES = ("auto", "cpu", "cuda")


@dataclass
class EvaluateConfig:
    task: str | None = None  # default: ppl for causal LMs, sts for encoders; or "lm-eval:TASK[,TASK]"
    data: str | None = None
    split: str = "test"
    seq_len: int = 1024
    max_windows: int | None = None
    fidelity: bool = True  # also compare the compressed model's outputs with the original's
    limit: int | None = None  # lm-eval tasks: items per task (the same items for both models)


@dataclass
class ExportConfig:
    """`model/` (an HF folder) is always written; onnx / gguf add `onnx/` or `model.gguf` beside it,
    evaluated in their runtime (results.json "export")."""
    format: str = "hf"
    type: str | None = None  # GGUF: type of the weights slimformer did not quantize (default f16)


EXPORT_FORMATS = ("hf", "compressed-tensors", "onnx", "gguf", "openvino")


@dataclass
class StageEntry:
    name: str
    config: Any


@dataclass
class Recipe:
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    stages: list[StageEntry] = field(default_factory=list)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    source: str = "<in memory>"

    def to_dict(self) -> dict:
        return {
            "calibration": dataclasses.asdict(self.calibration),
            "stages": [{s.name: dataclasses.asdict(s.config)} for s in self.stages],
            "evaluate": dataclasses.asdict(self.evaluate),
            "bench": dataclasses.asdict(self.bench),
            "export": dataclasses.asdict(self.export),
        }


SECTIONS = {"calibration": CalibrationConfig, "evaluate": EvaluateConfig, "bench": BenchConfig,
            "export": ExportConfig}


def default_recipe_path() -> Path:
    return Path(__file__).parent / "recipes" / "default.yaml"


def load_recipe(path: str | os.PathLike | None = None) -> Recipe:
    path = Path(path) if path else default_recipe_path()
    if not path.is_file():
        raise RecipeError(f"recipe {path} not found; pass an existing YAML file to --recipe")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise RecipeError(f"recipe {path} is not valid YAML{where}; fix its syntax") from None
    recipe = parse_recipe(raw if raw is not None else {}, where=str(path))
    recipe.source = str(path)
    return recipe


def parse_recipe(raw: Any, where: str = "recipe") -> Recipe:
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: the recipe must be a mapping with keys {_known(SECTIONS, 'stages')}")
    unknown = set(raw) - set(SECTIONS) - {"stages"}
    if unknown:
        raise RecipeError(f"{where}: unknown key {sorted(unknown)[0]!r}; known keys: {_known(SECTIONS, 'stages')}")
    recipe = Recipe()
    for name, cls in SECTIONS.items():
        if name in raw:
            setattr(recipe, name, build_config(cls, raw[name], f"{where}: {name}"))
    recipe.stages = _parse_stages(raw.get("stages") or [], where)
    _check_stage_order(recipe.stages, where)
    _check_values(recipe, where)
    return recipe


# The built-in stages run in this order. A stage may repeat or be left out, and stages registered
# elsewhere are not ordered; but trim and prune change dense weights, which a quantize stage has
# replaced by integer codes, so after quantize only recover (QAT) may follow.
STAGE_ORDER = ("trim", "prune", "quantize", "recover")
_AFTER_QUANTIZE = ("recover",)


def _check_stage_order(stages: list[StageEntry], where: str) -> None:
    names = [s.name for s in stages]
    if "quantize" not in names:
        return
    first = names.index("quantize")
    for i, name in enumerate(names[first + 1:], start=first + 2):
        if name in STAGE_ORDER and name not in _AFTER_QUANTIZE:
            raise RecipeError(f"{where}: stage {i} ({name}) comes after quantize, which leaves no dense "
                              f"weights to {name}; order the stages {' / '.join(STAGE_ORDER)}")
        if name == "recover" and getattr(stages[i - 1].config, "lora", 0):
            raise RecipeError(f"{where}: stage {i} (recover with lora) comes after quantize, and LoRA wraps "
                              "plain linears only; put recover before quantize, or set lora: 0 (QAT)")


def _parse_stages(raw: Any, where: str) -> list[StageEntry]:
    if not isinstance(raw, list):
        raise RecipeError(f"{where}: stages must be a list like `- trim: {{...}}`")
    entries = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            item = {item: {}}
        if not isinstance(item, dict) or len(item) != 1:
            raise RecipeError(f"{where}: stage {i + 1} must be one `name: {{options}}` mapping")
        (name, opts), = item.items()
        if name not in STAGES:
            raise RecipeError(f"{where}: unknown stage {name!r}; known stages: {known_stages()}")
        config = build_config(STAGES[name].config_cls, opts or {}, f"{where}: stage {name}")
        if hasattr(config, "validate"):
            try:
                config.validate()
            except SlimformerError as e:
                raise RecipeError(f"{where}: stage {name}: {e}") from None
        entries.append(StageEntry(name, config))
    return entries


def build_config(cls: type, raw: Any, where: str):
    """A dataclass from a mapping: unknown keys and wrong types are errors naming what fits."""
    if not isinstance(raw, dict):
        raise RecipeError(f"{where} must be a mapping of options")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(raw) - set(fields)
    if unknown:
        raise RecipeError(f"{where}: unknown option {sorted(unknown)[0]!r}; options: {', '.join(fields)}")
    values = {}
    for key, value in raw.items():
        values[key] = _coerce(value, fields[key], cls, where)
    return cls(**values)


def _coerce(value: Any, f: dataclasses.Field, cls: type, where: str):
    default = f.default if f.default is not dataclasses.MISSING else None
    hint = str(f.type)
    if value is None:
        if "None" in hint:
            return None
        raise RecipeError(f"{where}: {f.name} cannot be empty")
    if hint.startswith("dict"):
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise RecipeError(f"{where}: {f.name} must be a mapping of names to values (got {value!r})")
        return dict(value)
    if hint.startswith("list"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise RecipeError(f"{where}: {f.name} must be a list of strings (got {value!r})")
        return list(value)
    if "tuple" in hint:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) for v in value):
            raise RecipeError(f"{where}: {f.name} must be a list of integers (got {value!r})")
        return tuple(value)
    if hint.startswith("bool") or isinstance(default, bool):
        if not isinstance(value, bool):
            raise RecipeError(f"{where}: {f.name} must be true or false (got {value!r})")
        return value
    if hint.startswith("int") or isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{where}: {f.name} must be an integer (got {value!r})")
        return value
    if hint.startswith("float") or isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{where}: {f.name} must be a number (got {value!r})")
        return float(value)
    if hint.startswith("str") and not isinstance(value, str):
        raise RecipeError(f"{where}: {f.name} must be a string (got {value!r})")
    return value


def _check_values(recipe: Recipe, where: str) -> None:
    from .evaluate import TASKS
    cal = recipe.calibration
    if (cal.samples is not None and cal.samples < 1) or cal.seq_len < 2:
        raise RecipeError(f"{where}: calibration needs samples >= 1 and seq_len >= 2")
    if cal.split == "test":
        raise RecipeError(f"{where}: calibration must not use the test split; use validation or train")
    if cal.dtype not in CALIBRATION_DTYPES:
        raise RecipeError(f"{where}: calibration dtype {cal.dtype!r} unknown; use {' or '.join(CALIBRATION_DTYPES)}")
    if cal.device not in CALIBRATION_DEVICES:
        raise RecipeError(f"{where}: calibration device {cal.device!r} unknown; use {', '.join(CALIBRATION_DEVICES)}")
    task = recipe.evaluate.task
    harness = task is not None and task.startswith("lm-eval:")
    if task is not None and not harness and task not in TASKS:
        raise RecipeError(f"{where}: evaluate task {task!r} unknown; tasks: {', '.join(TASKS)}, lm-eval:NAME")
    if harness and recipe.export.format == "openvino":
        raise RecipeError(f"{where}: lm-eval tasks score causal LMs, and the openvino export is for encoders; "
                          "export a decoder as gguf, onnx, hf or compressed-tensors")
    if recipe.evaluate.limit is not None and (not harness or recipe.evaluate.limit < 1):
        raise RecipeError(f"{where}: evaluate limit (items per task, >= 1) applies to lm-eval tasks only")
    if recipe.export.format not in EXPORT_FORMATS:
        raise RecipeError(f"{where}: export format {recipe.export.format!r} is not available; "
                          f"formats: {', '.join(EXPORT_FORMATS)}")
    from .export.gguf_blocks import DENSE_TYPES
    if recipe.export.type is not None and (recipe.export.format != "gguf" or recipe.export.type not in DENSE_TYPES):
        raise RecipeError(f"{where}: export type applies to gguf only, one of {', '.join(DENSE_TYPES)} "
                          f"(got format {recipe.export.format!r}, type {recipe.export.type!r})")
    try:
        recipe.bench.validate()
    except Exception as e:
        raise RecipeError(f"{where}: {e}") from None


def _known(sections: dict, *extra: str) -> str:
    return ", ".join(list(sections) + list(extra))
