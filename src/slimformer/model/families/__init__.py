"""The supported families, one module each; the only code that knows model types.

A family is supported when its module's FAMILY lists the config's model_type. Head counts and
FFN widths are read per block from the modules (trimming may leave different counts in different
blocks), and checked against the real weights so that a mismatch fails at load, not in the
middle of a method. Adding a family: one module here with an adapter and a FAMILY, listed below.
"""
from __future__ import annotations

from torch import nn

from ...errors import UnsupportedModelError
from ..arch import ArchMap, get_module
from .base import Family
from . import bert, distilbert, gemma3, gpt2, llama, modernbert, mpnet, phi3

FAMILIES: tuple[Family, ...] = (bert.FAMILY, distilbert.FAMILY, mpnet.FAMILY, modernbert.FAMILY, gpt2.FAMILY,
                                llama.FAMILY, gemma3.FAMILY, phi3.FAMILY)
BY_NAME = {f.name: f for f in FAMILIES}
BY_TYPE = {t: f for f in FAMILIES for t in f.model_types}
SUPPORTED = "; ".join(f.describe for f in FAMILIES)


def family(name_or_arch: str | ArchMap) -> Family:
    """The Family of an ArchMap (or of a family name, as stored in slimformer.json)."""
    name = name_or_arch.family if isinstance(name_or_arch, ArchMap) else name_or_arch
    return BY_NAME[name]


def family_of_type(model_type: str | None) -> Family:
    check_supported(model_type)
    return BY_TYPE[model_type]


def gguf_model_types() -> dict[str, str]:
    """GGUF general.architecture -> the model_type transformers loads it as."""
    return {arch: arch for f in FAMILIES for arch in f.gguf_sources}


def family_of_gguf(gguf_arch: str) -> Family | None:
    """The family whose GGUF export writes (or whose loader reads) this llama.cpp architecture."""
    for f in FAMILIES:
        if gguf_arch in f.gguf_arch.values() or gguf_arch in f.gguf_sources:
            return f
    return None


def exports_for(arch: ArchMap) -> list[str]:
    """The formats `slimformer export` writes for this model (named in every refusal)."""
    fam = family(arch)
    out = ["hf"]
    if fam.onnx and (fam.onnx != "encoder" or arch.kind == "encoder"):  # an encoder graph lowers no decoder
        out.append("onnx")
    if fam.onnx == "encoder" and arch.kind == "encoder":  # OpenVINO IR is converted from the encoder graph
        out.append("openvino")
    if arch.model_type in fam.gguf_arch and arch.kind == "causal":  # llama.cpp's graphs here are causal LMs
        out.append("gguf")
    return out


def check_supported(model_type: str | None) -> None:
    if model_type not in BY_TYPE:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported; supported families: {SUPPORTED}")


def build_arch_map(root: nn.Module) -> ArchMap:
    cfg = root.config
    fam = family_of_type(cfg.model_type)
    arch = fam.adapter(root, cfg, cfg.model_type)
    _check_shapes(root, arch)
    return arch


def _check_shapes(root: nn.Module, arch: ArchMap) -> None:
    """Fail early if the config and the weights disagree (say, a hand-edited config)."""
    for blk in arch.blocks:
        a = blk.attn
        q_rows = a.n_heads * a.head_dim
        kv_rows = a.n_kv_heads * a.head_dim
        if a.fused:
            expected = {a.qkv: q_rows + 2 * kv_rows}
        else:
            expected = {a.q: q_rows, a.k: kv_rows, a.v: kv_rows}
        expected[blk.ffn.up] = blk.ffn.width * (2 if blk.ffn.fused_gate_up else 1)
        if blk.ffn.gate:
            expected[blk.ffn.gate] = blk.ffn.width
        for name, rows in expected.items():
            mod = get_module(root, name)
            got = getattr(mod, "out_features", None) or mod.weight.shape[0]
            if got != rows:
                raise UnsupportedModelError(
                    f"{name} has {got} output rows but the config implies {rows}; "
                    "the config does not describe these weights (check config.json)")
