"""HySquant-RL: mixed-precision post-training quantization policy search for CNN-Transformer hybrids."""

from hysquant_rl.errors import HySquantError

__all__ = ["HySquantError"]
__version__ = "0.1.0"
