"""compressed-tensors: the checkpoint format llm-compressor writes and transformers / vLLM load.

What it can describe is written in it, through the compressed-tensors library's own lifecycle
(the one llm-compressor follows): the model with every quantized linear replaced by a float
linear holding its dequantized weight, the library's quantization config applied, slimformer's
scales and zero points put into the parameters it creates, then `ModelCompressor.compress_model`
(which re-derives the integer codes from weight / scale: exactly slimformer's codes, since
round((q - z) * s / s) + z = q) and `save_pretrained` + `update_config`.

Per linear, by slimformer's grid (nn/spec.py: w = s * (q - z), signed codes, the library's
convention too):
- int8 per channel, symmetric, with dynamic activations -> W8A8 `int-quantized`, activations int8
  dynamic asymmetric per token (or per tensor), slimformer's own activation grid;
- the same with static activations -> `int-quantized`, activations int8 static symmetric per
  tensor with the calibrated scale (`input_scale`);
- weight-only int4 / int8, per channel or in groups that divide the row, symmetric or not ->
  `pack-quantized` (W4A16 / W8A16).
Not describable (the export refuses and names the layer): an unfolded smoothing vector
(input_scale), llama.cpp's full-range grid (negative scales), int3, a last group narrower than
the others, low-rank factors, a trimmed shape the config cannot state; `hf` keeps those.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from ..errors import MissingDependencyError, UnsupportedModelError
from ..model import Model
from ..nn import QuantLinear, compressed_modules


def _ct():
    try:
        import compressed_tensors
    except ImportError:
        raise MissingDependencyError("compressed-tensors export needs the compressed-tensors package: "
                                     "pip install 'slimformer[export]'") from None
    return compressed_tensors


def scheme_of(mod: QuantLinear) -> tuple[dict | None, str | None]:
    """(the compressed-tensors scheme fields of this layer, or None and why not)."""
    spec = mod.spec
    if mod.input_scale is not None:
        return None, "an unfolded smoothing vector (input_scale)"
    if mod.act_zero is not None:
        return None, "an asymmetric static activation range (zero point)"
    if mod.out_scale is not None:
        return None, "an int8 output grid (int8 attention inputs)"
    if spec.full_range:
        return None, "a full-range grid (llama.cpp's Q4_0 rule: negative scales)"
    if spec.bits not in (4, 8):
        return None, f"int{spec.bits} weights"
    if spec.group_size and mod.in_features % spec.group_size:
        return None, f"groups of {spec.group_size} that do not divide {mod.in_features} columns"
    weights = {"num_bits": spec.bits, "type": "int", "symmetric": spec.symmetric,
               "strategy": "group" if spec.group_size else "channel"}
    if spec.group_size:
        weights["group_size"] = spec.group_size
    if mod.act == "none":
        return {"weights": weights, "input_activations": None, "format": "pack-quantized"}, None
    if not (spec.bits == 8 and spec.symmetric and not spec.group_size):
        return None, "activation quantization with weights other than int8 per channel symmetric"
    if mod.act == "dynamic":
        acts = {"num_bits": 8, "type": "int", "symmetric": False, "dynamic": True,
                "strategy": "token" if mod.granularity == "token" else "tensor"}
    else:
        acts = {"num_bits": 8, "type": "int", "symmetric": True, "dynamic": False, "strategy": "tensor"}
    return {"weights": weights, "input_activations": acts, "format": "int-quantized"}, None


def check_exportable(model: Model) -> None:
    """What can be known of the model as it is (a recipe checks before its stages run: the
    quantized layers do not exist yet; `write_compressed_tensors` refuses a model without any)."""
    from ..model.shapes import config_mismatches
    mods = compressed_modules(model.module)
    for name, mod in mods.items():
        if not isinstance(mod, QuantLinear):
            raise UnsupportedModelError(f"{name}: a {type(mod).__name__} has no compressed-tensors form; "
                                        "export it as hf")
        _, why = scheme_of(mod)
        if why:
            raise UnsupportedModelError(f"{name}: compressed-tensors cannot describe {why}; export it as hf "
                                        "(slimformer's own layout)")
    if model.masks:
        raise UnsupportedModelError("pruning masks: compressed-tensors' sparse formats are not written here; "
                                    "export it as hf")
    if config_mismatches(model, quantized_as_dense=True):
        raise UnsupportedModelError("the trimmed shapes differ from what config.json can state; export it as hf")
    _ct()


def obstacle(model: Model) -> str | None:
    """Why the model cannot be written as compressed-tensors (in a sentence), or None when it can:
    compress writes its model/ that way whenever nothing stands in the way."""
    if not compressed_modules(model.module):
        return "no quantized layer"
    if model.lazy is not None:
        return "the model was loaded lazily (the compressed-tensors writer needs the whole module)"
    try:
        check_exportable(model)
    except (UnsupportedModelError, MissingDependencyError) as e:
        return str(e).split(";")[0]
    import psutil
    dense = sum(q.in_features * q.out_features * 4 for q in compressed_modules(model.module).values())
    if dense > 0.5 * psutil.virtual_memory().available:  # the writer holds a dequantized fp32 copy
        return (f"memory: the compressed-tensors writer needs a dequantized fp32 copy of the quantized layers "
                f"({dense / 2**30:.1f} GiB), more than half the available memory")
    return None


def _dequantized_copy(model: Model) -> tuple[nn.Module, dict[str, QuantLinear]]:
    """A deep copy of the module whose quantized linears are float linears with their
    dequantized weights (the library re-derives the codes from those)."""
    module = copy.deepcopy(model.module)
    originals = compressed_modules(model.module)
    for name, q in originals.items():
        lin = nn.Linear(q.in_features, q.out_features, bias=q.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(q.dequantized())
            if q.bias is not None:
                lin.bias.copy_(q.bias)
        parent, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, child, lin)
    return module, originals


def write_compressed_tensors(model: Model, folder: Path) -> dict:
    _ct()
    if not compressed_modules(model.module):
        raise UnsupportedModelError("the model has no quantized layer: export it as hf (plain transformers "
                                    "loads it)")
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme, apply_quantization_config
    from ..model.save import write_tokenizer_files
    module, originals = _dequantized_copy(model)
    groups: dict[str, dict] = {}
    for name, mod in originals.items():
        fields, _ = scheme_of(mod)
        key = repr(sorted((k, repr(v)) for k, v in fields.items()))
        groups.setdefault(key, {**fields, "targets": []})["targets"].append(name)
    config = QuantizationConfig(
        config_groups={f"group_{i}": QuantizationScheme(**g) for i, g in enumerate(groups.values())},
        quantization_status="frozen")
    apply_quantization_config(module, config, show_progress=False)
    with torch.no_grad():
        for name, q in originals.items():
            lin = module.get_submodule(name)
            lin.weight_scale.copy_(q.scales.view_as(lin.weight_scale).to(lin.weight_scale.dtype))
            if hasattr(lin, "weight_zero_point"):
                lin.weight_zero_point.copy_(q.zeros.view_as(lin.weight_zero_point).to(lin.weight_zero_point.dtype))
            if q.act == "static":
                lin.input_scale.copy_(q.act_scale.view_as(lin.input_scale))
    compressor = ModelCompressor.from_pretrained_model(module)
    compressor.compress_model(module)
    module.save_pretrained(folder)
    compressor.update_config(str(folder))
    write_tokenizer_files(model, folder)
    formats = sorted({g["format"] for g in groups.values()})
    return {"compressed_tensors": _ct().__version__, "formats": formats, "layers": len(originals),
            "schemes": len(groups)}
