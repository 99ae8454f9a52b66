"""The quantize stage: integer grids (spec), methods (RTN, GPTQ, AWQ, SmoothQuant), kernels and
the QuantLinear module that runs on them."""
from ..nn.quant_linear import QuantLinear
from ..nn.spec import QuantSpec
from .stage import QuantizeConfig, quantize_model

__all__ = ["QuantLinear", "QuantSpec", "QuantizeConfig", "quantize_model"]
