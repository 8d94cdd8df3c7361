"""Quantize a model in place: wrap every Conv2d/Linear once, calibrate activations once, switch bit-widths.

Each quantizable layer's class is swapped for a subclass with :class:`QuantMixin` (state-dict keys, module
names and parameters stay as they were). A policy is then applied by setting ``w_bits``/``a_bits`` on each
layer: fake-quantized weights are cached per (layer, bits) and activation (Delta, Z) per (layer, bits), so
switching policies costs nothing but the next forward pass.

Activation ranges come from the calibrator (:mod:`hysquant_rl.quant.calibrate`): min-max by default; the
percentile and MSE rules read a histogram recorded in a second calibration pass. Weights are always min-max
(per tensor or per output channel).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from hysquant_rl.bits import FP32_BITS, check_bits
from hysquant_rl.quant.calibrate import histogram, mse_range, percentile_range
from hysquant_rl.quant.quantizer import fake_quantize, minmax, qparams, quantize
from hysquant_rl.settings import CALIBRATORS, GRANULARITIES, check_choice

QUANTIZABLE = (nn.Conv2d, nn.Linear)


class ActivationQuant:
    """An activation tensor's quantizer (one per unit input): calibration observes it, the layer's calibrator
    turns what was seen into a range per bit-width, and :meth:`quantize_input` fake-quantizes at ``a_bits``."""

    a_bits: int

    def _init_activation(self, calibrator: str = "minmax", percentile: float = 100.0) -> None:
        self.a_bits = FP32_BITS
        self.calibrator, self.percentile = calibrator, percentile
        self.observing: bool | str = False  # False, "range" (min-max pass) or "histogram" (second pass)
        self.act_min: torch.Tensor | None = None
        self.act_max: torch.Tensor | None = None
        self.act_hist: torch.Tensor | None = None  # (BINS,) over [act_min, act_max], non-default calibrators
        self._a_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def act_range(self, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The range the ``bits``-bit quantizer covers, by the calibrator."""
        if self.act_min is None:
            raise RuntimeError("activation ranges are not calibrated: call QuantModel.calibrate first")
        if self.calibrator == "minmax" or self.act_hist is None:
            return self.act_min, self.act_max
        if self.calibrator == "percentile":
            return percentile_range(self.act_hist, self.act_min, self.act_max, self.percentile)
        return mse_range(self.act_hist, self.act_min, self.act_max, bits)

    def act_qparams(self, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Delta and Z of the activation at ``bits``, from the calibrated range."""
        if bits not in self._a_cache:
            self._a_cache[bits] = qparams(*self.act_range(bits), bits)
        return self._a_cache[bits]

    def _observe(self, x: torch.Tensor) -> None:
        if self.observing == "histogram":
            counts = histogram(x, self.act_min, self.act_max)
            self.act_hist = counts if self.act_hist is None else self.act_hist + counts
        else:
            lo, hi = x.detach().min().float(), x.detach().max().float()
            self.act_min = lo if self.act_min is None else torch.minimum(self.act_min, lo)
            self.act_max = hi if self.act_max is None else torch.maximum(self.act_max, hi)
        self._a_cache.clear()

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` observed (during calibration) and fake-quantized at ``a_bits`` (unchanged at FP32)."""
        if self.observing:
            self._observe(x)
        if self.a_bits == FP32_BITS:
            return x
        delta, zero = self.act_qparams(self.a_bits)
        return fake_quantize(x, delta, zero, self.a_bits)


class QuantMixin(ActivationQuant):
    """Adds fake quantization of the input activation (:class:`ActivationQuant`) and of the weight (min-max, per
    tensor or per output channel) to a Conv2d/Linear."""

    w_bits: int

    def _init_quant(self, per_channel: bool, calibrator: str = "minmax", percentile: float = 100.0) -> None:
        self._init_activation(calibrator, percentile)
        self.w_bits = FP32_BITS
        self.per_channel = per_channel
        self._w_cache: dict[int, torch.Tensor] = {}

    # -- weights ---------------------------------------------------------------------------------------
    def weight_qparams(self, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Integer codes (uint8, weight's shape), Delta and Z (scalars or per output channel) at ``bits``."""
        w = self.weight.detach()
        delta, zero = qparams(*minmax(w, self.per_channel), bits)
        return quantize(w, delta, zero, bits).to(torch.uint8), delta, zero

    def quantized_weight(self, bits: int) -> torch.Tensor:
        if bits not in self._w_cache:
            q, delta, zero = self.weight_qparams(bits)
            self._w_cache[bits] = ((q.float() - zero) * delta).to(self.weight.dtype)
        return self._w_cache[bits]

    def install(
        self,
        act_range: tuple[torch.Tensor, torch.Tensor] | None,
        weights: dict[int, torch.Tensor],
        act_qparams: dict[int, tuple[torch.Tensor, torch.Tensor]],
    ) -> None:
        """Restore stored quantization (a loaded export): the calibrated input range, dequantized weights
        and activation (Delta, Z) per bit-width. Re-deriving them from a dequantized weight would not be
        bit-identical: its min/max moved."""
        self.act_min, self.act_max = act_range if act_range is not None else (None, None)
        self._w_cache = dict(weights)
        self._a_cache = dict(act_qparams)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quantize_input(x)
        if self.w_bits == FP32_BITS:
            return self._base_forward(x)
        # Run the layer's own forward with the cached quantized weight in place of the parameter.
        weight = self._parameters["weight"]
        self._parameters["weight"] = self.quantized_weight(self.w_bits)
        try:
            return self._base_forward(x)
        finally:
            self._parameters["weight"] = weight


_QUANT_CLASSES: dict[type, type] = {}


def _quant_class(cls: type) -> type:
    """The QuantMixin subclass of ``cls`` (one per layer class), whose base forward is ``cls.forward``."""
    if cls not in _QUANT_CLASSES:
        _QUANT_CLASSES[cls] = type(
            f"Quant{cls.__name__}", (QuantMixin, cls), {"_base_forward": cls.forward, "__module__": __name__}
        )
    return _QUANT_CLASSES[cls]


class QuantModel(nn.Module):
    """A model whose quantizable layers (in forward order, named as ``model.named_modules`` names them)
    are wrapped once; :meth:`calibrate` once, then :meth:`apply` any number of policies.

    Args:
        model: the FP32 model; modified in place (its class-swapped layers compute FP32 until a policy is
            applied, bit-identically to before).
        names: names of the layers to quantize, in forward order (see :func:`hysquant_rl.layers.inventory`).
        weight_granularity: ``"tensor"`` (paper) or ``"channel"`` (per output channel) weight ranges.
        calibrator: the activation range rule, ``"minmax"`` (paper), ``"percentile"`` or ``"mse"``.
        percentile: ``p`` of the percentile rule, in (0, 100].
    """

    def __init__(
        self,
        model: nn.Module,
        names: Sequence[str],
        weight_granularity: str = "tensor",
        calibrator: str = "minmax",
        percentile: float = 99.99,
    ) -> None:
        super().__init__()
        check_choice(weight_granularity, "quant.weight_granularity", GRANULARITIES)
        check_choice(calibrator, "quant.calibrator", CALIBRATORS)
        self.calibrator = calibrator
        self.model = model
        self.names = list(names)
        modules = dict(model.named_modules())
        self.layers: list[QuantMixin] = []
        for name in self.names:
            m = modules[name]
            if not isinstance(m, QuantMixin):
                if not isinstance(m, QUANTIZABLE):
                    raise TypeError(f"layer {name} is a {type(m).__name__}, not a Conv2d or Linear")
                m.__class__ = _quant_class(type(m))
                m._init_quant(weight_granularity == "channel", calibrator, percentile)
            self.layers.append(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @torch.inference_mode()
    def calibrate(self, batches: Iterable[torch.Tensor | tuple[torch.Tensor, Any]]) -> None:
        """Record each layer's input-activation min/max over ``batches`` with the FP32 model; for the percentile
        and MSE calibrators also a histogram over that range, in a second pass (``batches`` is read twice)."""
        batches = list(batches)
        saved = self.bits()
        self.apply_bits([(FP32_BITS, FP32_BITS)] * len(self.layers))
        for layer in self.layers:
            layer.act_min = layer.act_max = layer.act_hist = None
        passes = ("range",) if self.calibrator == "minmax" else ("range", "histogram")
        try:
            self.model.eval()
            for observing in passes:
                for layer in self.layers:
                    layer.observing = observing
                for batch in batches:
                    self.model(batch[0] if isinstance(batch, (tuple, list)) else batch)
        finally:
            for layer in self.layers:
                layer.observing = False
            self.apply_bits(saved)
        missing = [n for n, l in zip(self.names, self.layers) if l.act_min is None]
        if missing:
            raise RuntimeError(f"{len(missing)} layers saw no input during calibration, e.g. {missing[0]}")

    def apply_bits(self, bits: Sequence[tuple[int, int]]) -> None:
        """Set (w_bits, a_bits) of every layer, in forward order; 32 means FP32."""
        if len(bits) != len(self.layers):
            raise ValueError(f"expected {len(self.layers)} (w_bits, a_bits) pairs, got {len(bits)}")
        for layer, (w, a) in zip(self.layers, bits):
            layer.w_bits = check_bits(int(w), "weight bit-width")
            layer.a_bits = check_bits(int(a), "activation bit-width")

    def bits(self) -> list[tuple[int, int]]:
        """The (w_bits, a_bits) currently applied, in forward order."""
        return [(l.w_bits, l.a_bits) for l in self.layers]

    @property
    def calibrated(self) -> bool:
        return all(l.act_min is not None for l in self.layers)
