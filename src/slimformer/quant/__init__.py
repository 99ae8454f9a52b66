"""The quantize stage: methods (RTN, GPTQ, AWQ, SmoothQuant), smoothing as an exact transform, and
the stage that swaps in QuantLinear (nn/, with its grids and integer kernels; re-exported here)."""
from ..nn.quant_linear import QuantLinear
from ..nn.spec import QuantSpec
from .stage import QuantizeConfig, quantize_model

__all__ = ["QuantLinear", "QuantSpec", "QuantizeConfig", "quantize_model"]
