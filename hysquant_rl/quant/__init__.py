"""Min-max post-training quantization (paper section 3.1): the equations and the in-place model wrapper."""

from hysquant_rl.quant.model import QuantModel
from hysquant_rl.quant.quantizer import FP32_BITS, MAX_BITS, MIN_BITS, dequantize, fake_quantize, qparams, quantize

__all__ = ["QuantModel", "FP32_BITS", "MIN_BITS", "MAX_BITS", "qparams", "quantize", "dequantize", "fake_quantize"]
