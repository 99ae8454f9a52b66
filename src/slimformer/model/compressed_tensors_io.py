"""Reading a compressed-tensors checkpoint (llm-compressor's output, slimformer's
`--format compressed-tensors` export) into slimformer's own QuantLinear layers, so the model runs
on slimformer's integer kernels and every stage, export and report works on it.

The codes are read as stored (int8 `weight`, or `weight_packed` unpacked with the library's own
helper), with `weight_scale`, `weight_zero_point` and a static `input_scale`; the scheme of each
linear is the config group whose targets match it (the library's matcher). What slimformer has
no kernel or grid for (float formats, static asymmetric activations, 2:4 sparse formats) is
refused with what to do. Dynamic activations run on slimformer's own grid (asymmetric, per token
or per tensor as the scheme says): for a symmetric dynamic scheme (llm-compressor's W8A8 preset)
the activation rounding differs from vLLM's, within int8 rounding.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import MissingDependencyError, UnsupportedModelError
from ..nn import QuantLinear, QuantSpec
from ..nn.quant_linear import real_kernel

METHOD = "compressed-tensors"


def quantization_config(cfg) -> dict | None:
    """The checkpoint's compressed-tensors config (a dict), or None for any other checkpoint."""
    qc = getattr(cfg, "quantization_config", None)
    if qc is None:
        return None
    qc = qc if isinstance(qc, dict) else qc.to_dict()
    return qc if qc.get("quant_method") == METHOD else None


def _state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no .safetensors weights")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def _args(scheme: dict, key: str) -> dict | None:
    a = scheme.get(key)
    return None if a is None else dict(a)


def _spec_and_act(name: str, scheme: dict, fmt: str) -> tuple[QuantSpec, str, str]:
    w, a = _args(scheme, "weights"), _args(scheme, "input_activations")
    if w is None or w.get("type", "int") != "int" or w.get("num_bits") not in (2, 3, 4, 5, 6, 7, 8):
        raise UnsupportedModelError(f"{name}: compressed-tensors scheme {w} is not an integer weight grid "
                                    "slimformer runs; load it with transformers instead")
    if fmt not in ("int-quantized", "pack-quantized", "naive-quantized"):
        raise UnsupportedModelError(f"{name}: compressed-tensors format {fmt!r} is not read here (int-quantized "
                                    "and pack-quantized are); load it with transformers instead")
    strategy = w.get("strategy", "tensor")
    if strategy not in ("channel", "group"):
        raise UnsupportedModelError(f"{name}: {strategy}-wise weight scales are not a slimformer grid "
                                    "(per channel or per group)")
    spec = QuantSpec(bits=int(w["num_bits"]), group_size=int(w.get("group_size") or 0) if strategy == "group" else 0,
                     symmetric=bool(w.get("symmetric", True)))
    if a is None:
        return spec, "none", "token"
    if a.get("type", "int") != "int" or a.get("num_bits") != 8:
        raise UnsupportedModelError(f"{name}: activations {a} are not int8; slimformer runs int8 activations")
    if a.get("dynamic"):
        if a.get("strategy") not in ("token", "tensor"):
            raise UnsupportedModelError(f"{name}: dynamic activations per {a.get('strategy')}; slimformer's "
                                        "kernels quantize per token or per tensor")
        return spec, "dynamic", a["strategy"]
    if not a.get("symmetric", True) or a.get("strategy", "tensor") != "tensor":
        raise UnsupportedModelError(f"{name}: static activations must be symmetric per tensor for slimformer's "
                                    "int8_static kernel")
    return spec, "static", "tensor"


def _codes(name: str, state: dict, spec: QuantSpec, fmt: str, out_f: int, in_f: int):
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    groups = spec.groups(in_f)
    scales = state.pop(f"{name}.weight_scale").float().reshape(out_f, groups)
    if fmt == "pack-quantized":
        q = unpack_from_int32(state.pop(f"{name}.weight_packed"), spec.bits, torch.Size((out_f, in_f)))
        state.pop(f"{name}.weight_shape", None)
        zp = state.pop(f"{name}.weight_zero_point", None)
        zeros = (unpack_from_int32(zp, spec.bits, torch.Size((out_f, groups)), packed_dim=0)
                 if zp is not None else torch.zeros(out_f, groups))
    else:
        q = state.pop(f"{name}.weight")
        zp = state.pop(f"{name}.weight_zero_point", None)
        zeros = zp.reshape(out_f, groups) if zp is not None else torch.zeros(out_f, groups)
    if q.dtype != torch.int8 or q.shape != (out_f, in_f):
        raise UnsupportedModelError(f"{name}: stored codes {tuple(q.shape)} {q.dtype} do not match the layer")
    return q.to(torch.int8), scales, zeros.to(torch.int8)


def load_compressed_tensors(module: nn.Module, folder: Path, qc: dict) -> int:
    """Load the checkpoint into `module` (built from the config, float weights), replacing each
    quantized linear by a QuantLinear with the stored codes. Returns how many were replaced."""
    try:
        from compressed_tensors.utils.match import match_named_modules
    except ImportError:
        raise MissingDependencyError(f"{folder} is a compressed-tensors checkpoint: pip install "
                                     "compressed-tensors") from None
    state = _state(folder)
    if qc.get("sparsity_config"):
        raise UnsupportedModelError(f"{folder}: compressed-tensors sparse formats are not read here; load it "
                                    "with transformers, or quantize the dense model with slimformer")
    if any(k.endswith(".weight_g_idx") for k in state):
        raise UnsupportedModelError(f"{folder}: activation-ordered group indices (weight_g_idx) are not read "
                                    "here; quantize with actorder off (or 'weight')")
    ignore = qc.get("ignore") or []
    n = 0
    for scheme in qc.get("config_groups", {}).values():
        fmt = scheme.get("format") or qc.get("format") or "int-quantized"
        for name, lin in list(match_named_modules(module, scheme.get("targets", []), ignore)):
            if not isinstance(lin, nn.Linear) or f"{name}.weight_scale" not in state:
                continue
            spec, act, granularity = _spec_and_act(name, scheme, fmt)
            q, scales, zeros = _codes(name, state, spec, fmt, lin.out_features, lin.in_features)
            act_scale = state.pop(f"{name}.input_scale", None)
            if act == "static" and act_scale is None:
                raise UnsupportedModelError(f"{name}: a static activation scheme without its input_scale; "
                                            "the checkpoint is incomplete")
            izp = state.pop(f"{name}.input_zero_point", None)
            if izp is not None and bool(izp.ne(0).any()):
                raise UnsupportedModelError(f"{name}: static activations with a zero point; slimformer's "
                                            "int8_static grid is symmetric")
            bias = state.pop(f"{name}.bias", None)
            kernel = real_kernel(spec, act, lin.in_features) or "simulated"
            qlin = QuantLinear.from_codes(q, scales, zeros, spec, bias, act, kernel,
                                          act_scale=float(act_scale.reshape(-1)[0]) if act_scale is not None else None,
                                          granularity=granularity)
            parent, _, child = name.rpartition(".")
            setattr(module.get_submodule(parent) if parent else module, child, qlin)
            n += 1
    missing, unexpected = module.load_state_dict(state, strict=False)
    quantized = {k for k in module.state_dict() if isinstance(_owner(module, k), QuantLinear)}
    tied_head = getattr(module.config, "tie_word_embeddings", False) and module.get_output_embeddings() is not None
    tied = {k for k in missing if tied_head and k == "lm_head.weight"}  # read from the embedding table
    if unexpected or set(missing) - quantized - tied:
        raise KeyError(f"the compressed-tensors weights do not match the config (missing "
                       f"{sorted(set(missing) - quantized - tied)[:3]}, unexpected {sorted(unexpected)[:3]})")
    module.tie_weights()
    return n


def _owner(module: nn.Module, key: str) -> nn.Module:
    parent = key.rpartition(".")[0]
    return module.get_submodule(parent) if parent else module
