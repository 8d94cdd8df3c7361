"""Min-max post-training quantization (paper section 3.1): the equations and the in-place model wrapper."""

from hysquant_rl.quant.model import QuantModel
from hysquant_rl.quant.quantizer import dequantize, fake_quantize, qparams, quantize

__all__ = ["QuantModel", "qparams", "quantize", "dequantize", "fake_quantize"]
