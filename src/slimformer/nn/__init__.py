"""Compressed modules: the layers slimformer puts in a model (quantized linears on integer kernels,
low-rank factorised linears), each registered with what load, save and export need from it.

This package sits below `model/`: load and save build and describe these modules through the
registry without knowing any compression method.
"""
from .ggml_linear import GgmlLinear
from .input_groups import link_input_groups
from .lowrank import LowRankLinear
from .quant_linear import QuantLinear
from .registry import build_modules, compressed_modules, describe_modules, register_module
from .spec import QuantSpec

__all__ = ["GgmlLinear", "LowRankLinear", "QuantLinear", "QuantSpec", "build_modules", "compressed_modules",
           "describe_modules", "link_input_groups", "register_module"]
