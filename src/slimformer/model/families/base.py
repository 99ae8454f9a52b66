"""What a family is: the one place that knows a model type.

A `Family` names the transformers model types it reads, how to build their ArchMap (the adapter,
which also records every architectural fact on the map: norms, activation, rotary settings...),
how to write trimmed head counts into the attention module, which config fields a uniform trim
rewrites, and which exports can lower it. Stages, exporters and runtimes read these facts; none
of them names a model type.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from ..arch import ArchMap, RopeSpec, get_module

Adapter = Callable[[nn.Module, object, str], ArchMap]
HeadSetter = Callable[[nn.Module, int, int, int], None]


@dataclass(frozen=True)
class Family:
    name: str  # ArchMap.family
    model_types: tuple[str, ...]  # config.model_type values this family reads
    adapter: Adapter
    set_heads: HeadSetter  # (attention module, n_heads, n_kv_heads, head_dim): what its forward reads
    config_keys: dict[str, str]  # heads, kv_heads, ffn, layers, hidden, head_dim -> config field
    describe: str  # for error messages and the supported-models list
    kind: str = "causal"  # "encoder" (AutoModel) or "causal" (AutoModelForCausalLM)
    encoder_when: Callable[[object], bool] | None = None  # a config flag that makes it an encoder
    # Exports that can lower this family (the exporter checks the finer facts on the ArchMap).
    onnx: str | None = None  # "encoder" (graph with pooling) | "decoder" (scoring graph) | None
    gguf_arch: dict[str, str] = field(default_factory=dict)  # model_type -> llama.cpp architecture written
    gguf_sources: tuple[str, ...] = field(default=())  # GGUF architectures that load as this family

    def kind_of(self, cfg) -> str:
        if self.encoder_when is not None and self.encoder_when(cfg):
            return "encoder"
        return self.kind


def prefix(root: nn.Module) -> str:
    """The dotted prefix of the base model inside a task model ("model." in LlamaForCausalLM)."""
    base = getattr(root, "base_model", root)
    return "" if base is root else root.base_model_prefix + "."


def out_features(mod: nn.Module) -> int:
    return getattr(mod, "out_features", None) or mod.weight.shape[0]


def rope_spec(cfg) -> RopeSpec:
    """transformers 5 keeps rotary settings in `rope_parameters` (per attention type for Gemma 3);
    older configs in rope_theta / rope_scaling."""
    params = dict(getattr(cfg, "rope_parameters", None) or {})
    local = None
    if "full_attention" in params and isinstance(params["full_attention"], dict):
        local = (params.get("sliding_attention") or {}).get("rope_theta")
        params = dict(params["full_attention"])
    if not params:
        params = {"rope_theta": getattr(cfg, "rope_theta", 10000.0), **(getattr(cfg, "rope_scaling", None) or {})}
    return RopeSpec(theta=float(params.get("rope_theta", 10000.0)),
                    partial=float(params.get("partial_rotary_factor", getattr(cfg, "partial_rotary_factor", 1.0))
                                  or 1.0),
                    scaling=str(params.get("rope_type", params.get("type", "default"))),
                    factor=float(params.get("factor", 1.0) or 1.0),
                    local_theta=float(local) if local is not None else None)


def has(root: nn.Module, name: str) -> bool:
    try:
        get_module(root, name)
        return True
    except AttributeError:
        return False
