"""Quantize a model in place: wrap every unit once, calibrate activations once, switch bit-widths.

Units (:mod:`hysquant_rl.units`):

* Conv2d/Linear layers: the class is swapped for a subclass with :class:`QuantMixin` (state-dict keys, module
  names and parameters stay as they were); weight and input activation are fake-quantized.
* ``layernorm-in``: an ``nn.LayerNorm``'s class is swapped for one with :class:`ActivationQuant` on its input (per
  tensor, or per channel with ``act_granularity="channel"``).
* ``attention-qk`` / ``attention-pv``: timm's ``Attention`` is swapped for :class:`QuantAttention`, which runs
  the unfused q k^T, softmax and attention x v with its two :class:`AttentionUnit` s quantizing the operands
  (the scaled q and k; the probabilities, with uniform or log2 levels, and v). At FP32 it computes exactly
  what timm's unfused path computes.

A policy is then applied by setting ``w_bits``/``a_bits`` on each unit (``w_bits`` of an activation-only unit is
ignored): fake-quantized weights are cached per (layer, bits) and activation (Delta, Z) per (tensor, bits), so
switching policies costs nothing but the next forward pass.

Activation ranges come from the calibrator (:mod:`hysquant_rl.quant.calibrate`): min-max by default; the
percentile and MSE rules read a histogram recorded in a second calibration pass. Weights are always min-max
(per tensor or per output channel).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from timm.layers.attention import maybe_add_mask, resolve_self_attn_mask
from torch import nn

from hysquant_rl.bits import FP32_BITS, check_bits
from hysquant_rl.inventory import recognised_attention
from hysquant_rl.quant.calibrate import histogram, log2_fake_quantize, mse_range, percentile_range
from hysquant_rl.quant.onnx_ops import DequantizedWeight, Log2Quantize, QuantizeDequantize
from hysquant_rl.quant.quantizer import fake_quantize, minmax, qparams, quantize
from hysquant_rl.settings import CALIBRATORS, GRANULARITIES, SOFTMAX_LEVELS, check_choice

QUANTIZABLE = (nn.Conv2d, nn.Linear)


class ActivationQuant:
    """One activation tensor's quantizer: calibration observes it, the calibrator turns what was seen into a range
    per bit-width, and :meth:`fake` fake-quantizes at a bit-width. Used as a mixin (a layer's input) or on its own
    (:class:`TensorQuant`: an attention operand).

    ``per_channel``: ranges per channel of the last dim (shape (C,)); ``levels``: ``"uniform"`` (eqs. 2-6) or
    ``"log2"`` (powers of two for probabilities in [0, 1]: no range needed)."""

    def _init_activation(
        self, calibrator: str = "minmax", percentile: float = 100.0, per_channel: bool = False, levels: str = "uniform"
    ) -> None:
        self.calibrator, self.percentile = calibrator, percentile
        self.act_per_channel, self.levels = per_channel, levels
        self.observing: bool | str = False  # False, "range" (min-max pass) or "histogram" (second pass)
        self.act_min: torch.Tensor | None = None
        self.act_max: torch.Tensor | None = None
        self.act_hist: torch.Tensor | None = None  # (BINS,) or (C, BINS) over [act_min, act_max]
        self._a_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def reset_calibration(self) -> None:
        self.act_min = self.act_max = self.act_hist = None
        self._a_cache.clear()

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
            x = x.detach()
            if self.act_per_channel:
                flat = x.reshape(-1, x.shape[-1])
                lo, hi = flat.amin(0).float(), flat.amax(0).float()
            else:
                lo, hi = x.min().float(), x.max().float()
            self.act_min = lo if self.act_min is None else torch.minimum(self.act_min, lo)
            self.act_max = hi if self.act_max is None else torch.maximum(self.act_max, hi)
        self._a_cache.clear()

    def fake(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        """``x`` observed (during calibration) and fake-quantized at ``bits`` (unchanged at FP32)."""
        if self.observing:
            self._observe(x)
        if bits == FP32_BITS:
            return x
        exporting = torch.onnx.is_in_onnx_export()  # the same numbers, written as QDQ nodes (quant/onnx_ops.py)
        if self.levels == "log2":
            return Log2Quantize.apply(x, bits) if exporting else log2_fake_quantize(x, bits)
        delta, zero = self.act_qparams(bits)
        if exporting:
            return QuantizeDequantize.apply(x, delta, zero, bits, -1 if self.act_per_channel else None)
        return fake_quantize(x, delta, zero, bits)

    def install_activation(
        self,
        act_range: tuple[torch.Tensor, torch.Tensor] | None,
        act_qparams: dict[int, tuple[torch.Tensor, torch.Tensor]],
    ) -> None:
        """Restore a stored calibration (a loaded export): the range and the (Delta, Z) per bit-width."""
        self.act_min, self.act_max = act_range if act_range is not None else (None, None)
        self._a_cache = dict(act_qparams)

    @property
    def calibrated(self) -> bool:
        return self.levels == "log2" or self.act_min is not None


class TensorQuant(ActivationQuant):
    """A standalone :class:`ActivationQuant` (an attention operand)."""

    def __init__(self, calibrator: str, percentile: float, levels: str = "uniform") -> None:
        self._init_activation(calibrator, percentile, levels=levels)


class Unit:
    """What :class:`QuantModel` drives: a (w_bits, a_bits) pair and the activation tensors it quantizes."""

    w_bits: int
    a_bits: int

    def quantizers(self) -> dict[str, ActivationQuant]:
        """The unit's activation quantizers by operand name."""
        raise NotImplementedError


class AttentionUnit(Unit):
    """The two operands of one attention matmul (``qk``: q, k; ``pv``: p, v), quantized at the unit's
    ``a_bits``; the probabilities ``p`` with ``softmax`` levels."""

    def __init__(self, operands: tuple[str, str], calibrator: str, percentile: float, softmax: str = "uniform") -> None:
        self.w_bits = self.a_bits = FP32_BITS
        self.operands = {
            name: TensorQuant(calibrator, percentile, softmax if name == "p" else "uniform") for name in operands
        }

    def quantizers(self) -> dict[str, ActivationQuant]:
        return self.operands

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (tx, ty) = self.operands.values()
        return tx.fake(x, self.a_bits), ty.fake(y, self.a_bits)


class InputUnit(ActivationQuant, Unit):
    """A module unit whose one quantized activation is its input (the mixin is that tensor's quantizer)."""

    def quantizers(self) -> dict[str, ActivationQuant]:
        return {"input": self}


class QuantMixin(InputUnit):
    """Adds fake quantization of the input activation (:class:`ActivationQuant`) and of the weight (min-max, per
    tensor or per output channel) to a Conv2d/Linear."""

    def _init_quant(self, per_channel: bool, calibrator: str = "minmax", percentile: float = 100.0) -> None:
        self._init_activation(calibrator, percentile)
        self.w_bits = self.a_bits = FP32_BITS
        self.per_channel = per_channel
        self._w_cache: dict[int, torch.Tensor] = {}
        self._codes: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # bits -> codes, Delta, Z

    # -- weights ---------------------------------------------------------------------------------------
    def weight_qparams(self, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Integer codes (uint8, weight's shape), Delta and Z (scalars or per output channel) at ``bits``."""
        w = self.weight.detach()
        delta, zero = qparams(*minmax(w, self.per_channel), bits)
        return quantize(w, delta, zero, bits).to(torch.uint8), delta, zero

    def quantized_weight(self, bits: int) -> torch.Tensor:
        """The dequantized weight at ``bits`` (eq. 6 on its codes), cached with the codes, Delta and Z."""
        if bits not in self._w_cache:
            q, delta, zero = self.weight_qparams(bits)
            self._w_cache[bits] = ((q.float() - zero) * delta).to(self.weight.dtype)
            self._codes[bits] = (q, delta, zero)
        return self._w_cache[bits]

    def install(
        self,
        act_range: tuple[torch.Tensor, torch.Tensor] | None,
        weights: dict[int, torch.Tensor],
        act_qparams: dict[int, tuple[torch.Tensor, torch.Tensor]],
        codes: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        """Restore stored quantization (a loaded export): the calibrated input range, dequantized weights
        and activation (Delta, Z) per bit-width, and the weight's integer codes with their Delta and Z. Re-deriving
        them from a dequantized weight would not be bit-identical: its min/max moved."""
        self.install_activation(act_range, act_qparams)
        self._w_cache = dict(weights)
        self._codes = dict(codes or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fake(x, self.a_bits)
        if self.w_bits == FP32_BITS:
            return self._base_forward(x)
        # Run the layer's own forward with the cached quantized weight in place of the parameter.
        weight = self._parameters["weight"]
        quantized = self.quantized_weight(self.w_bits)
        if torch.onnx.is_in_onnx_export():  # DequantizeLinear of the integer codes in the exported graph
            codes, delta, zero = self._codes[self.w_bits]
            quantized = DequantizedWeight.apply(quantized, codes, delta, zero, 0 if self.per_channel else None)
        self._parameters["weight"] = quantized
        try:
            return self._base_forward(x)
        finally:
            self._parameters["weight"] = weight


class QuantLayerNorm(InputUnit):
    """A LayerNorm whose input (the residual stream) is fake-quantized at ``a_bits``."""

    def _init_quant(self, calibrator: str, percentile: float, per_channel: bool) -> None:
        self._init_activation(calibrator, percentile, per_channel)
        self.w_bits = self.a_bits = FP32_BITS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._base_forward(self.fake(x, self.a_bits))


class QuantAttention:
    """Mixin for timm's ``Attention``: the unfused forward pass with the ``qk_unit`` and ``pv_unit`` operands
    quantized. Line for line timm's unfused path (``fused_attn=False``) otherwise."""

    exposes_attention_units = True
    qk_unit: AttentionUnit
    pv_unit: AttentionUnit

    def _init_quant(self, calibrator: str, percentile: float, softmax: str) -> None:
        self.qk_unit = AttentionUnit(("q", "k"), calibrator, percentile)
        self.pv_unit = AttentionUnit(("p", "v"), calibrator, percentile, softmax)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        B, N, C = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.qk_unit(q * self.scale, k)
        attn = q @ k.transpose(-2, -1)
        attn_bias = resolve_self_attn_mask(N, attn, attn_mask, is_causal)
        attn = maybe_add_mask(attn, attn_bias)
        attn = attn.softmax(dim=-1)
        attn = self.attn_drop(attn)
        attn, v = self.pv_unit(attn, v)
        x = attn @ v
        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        x = self.proj(x)
        return self.proj_drop(x)


_QUANT_CLASSES: dict[type, type] = {}


def _quant_class(cls: type, mixin: type) -> type:
    """The ``mixin`` subclass of ``cls`` (one per class), whose base forward is ``cls.forward``."""
    if cls not in _QUANT_CLASSES:
        _QUANT_CLASSES[cls] = type(
            f"Quant{cls.__name__}", (mixin, cls), {"_base_forward": cls.forward, "__module__": __name__}
        )
    return _QUANT_CLASSES[cls]


class QuantModel(nn.Module):
    """A model whose quantizable units (in forward order, named as :func:`hysquant_rl.inventory.inventory` names
    them) are wrapped once; :meth:`calibrate` once, then :meth:`apply_bits` any number of policies.

    Args:
        model: the FP32 model; modified in place (its class-swapped modules compute FP32 until a policy is
            applied: Conv2d/Linear/LayerNorm bit-identically to before, attention as timm's unfused path).
        names: names of the units to quantize, in forward order (see :func:`hysquant_rl.inventory.inventory`).
        weight_granularity: ``"tensor"`` (paper) or ``"channel"`` (per output channel) weight ranges.
        calibrator: the activation range rule, ``"minmax"`` (paper), ``"percentile"`` or ``"mse"``.
        percentile: ``p`` of the percentile rule, in (0, 100].
        softmax: levels of the softmax probabilities, ``"uniform"`` or ``"log2"``.
        act_granularity: ``"tensor"`` or ``"channel"`` (per channel of the residual stream) ranges of the
            ``layernorm-in`` units.
    """

    def __init__(
        self,
        model: nn.Module,
        names: Sequence[str],
        weight_granularity: str = "tensor",
        calibrator: str = "minmax",
        percentile: float = 99.99,
        softmax: str = "uniform",
        act_granularity: str = "tensor",
    ) -> None:
        super().__init__()
        check_choice(weight_granularity, "quant.weight_granularity", GRANULARITIES)
        check_choice(act_granularity, "quant.act_granularity", GRANULARITIES)
        check_choice(calibrator, "quant.calibrator", CALIBRATORS)
        check_choice(softmax, "quant.softmax", SOFTMAX_LEVELS)
        self.calibrator = calibrator
        self.model = model
        self.names = list(names)
        modules = dict(model.named_modules())
        self.units: list[Unit] = []
        for name in self.names:
            m = modules.get(name)
            parent, _, own = name.rpartition(".")
            if m is None and own in ("qk", "pv") and recognised_attention(modules.get(parent)):
                attn = modules[parent]
                if not isinstance(attn, QuantAttention):
                    attn.__class__ = _quant_class(type(attn), QuantAttention)
                    attn._init_quant(calibrator, percentile, softmax)
                self.units.append(attn.qk_unit if own == "qk" else attn.pv_unit)
                continue
            if m is None:
                raise TypeError(f"the model has no module or attention unit named {name}")
            if not isinstance(m, Unit):
                if isinstance(m, QUANTIZABLE):
                    m.__class__ = _quant_class(type(m), QuantMixin)
                    m._init_quant(weight_granularity == "channel", calibrator, percentile)
                elif isinstance(m, nn.LayerNorm):
                    m.__class__ = _quant_class(type(m), QuantLayerNorm)
                    m._init_quant(calibrator, percentile, act_granularity == "channel")
                else:
                    raise TypeError(f"unit {name} is a {type(m).__name__}, not a Conv2d, Linear or LayerNorm")
            self.units.append(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def quantizers(self) -> list[ActivationQuant]:
        """Every activation quantizer of every unit."""
        return [t for unit in self.units for t in unit.quantizers().values()]

    @torch.inference_mode()
    def calibrate(self, batches: Iterable[torch.Tensor | tuple[torch.Tensor, Any]]) -> None:
        """Record each activation's min/max over ``batches`` with the FP32 model; for the percentile and MSE
        calibrators also a histogram over that range, in a second pass (``batches`` is read twice)."""
        batches = list(batches)
        saved = self.bits()
        self.apply_bits([(FP32_BITS, FP32_BITS)] * len(self.units))
        tensors = [t for t in self.quantizers() if t.levels == "uniform"]
        for t in tensors:
            t.reset_calibration()
        passes = ("range",) if self.calibrator == "minmax" else ("range", "histogram")
        try:
            self.model.eval()
            for observing in passes:
                for t in tensors:
                    t.observing = observing
                for batch in batches:
                    self.model(batch[0] if isinstance(batch, (tuple, list)) else batch)
        finally:
            for t in tensors:
                t.observing = False
            self.apply_bits(saved)
        missing = [n for n, u in zip(self.names, self.units) if not all(t.calibrated for t in u.quantizers().values())]
        if missing:
            raise RuntimeError(f"{len(missing)} units saw no input during calibration, e.g. {missing[0]}")

    def apply_bits(self, bits: Sequence[tuple[int, int]]) -> None:
        """Set (w_bits, a_bits) of every unit, in forward order; 32 means FP32 (``w_bits`` of an activation-only
        unit is checked and kept, and changes nothing)."""
        if len(bits) != len(self.units):
            raise ValueError(f"expected {len(self.units)} (w_bits, a_bits) pairs, got {len(bits)}")
        for unit, (w, a) in zip(self.units, bits):
            unit.w_bits = check_bits(int(w), "weight bit-width")
            unit.a_bits = check_bits(int(a), "activation bit-width")

    def bits(self) -> list[tuple[int, int]]:
        """The (w_bits, a_bits) currently applied, in forward order."""
        return [(u.w_bits, u.a_bits) for u in self.units]

    @property
    def calibrated(self) -> bool:
        return all(t.calibrated for t in self.quantizers())


def float_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` (the model a :class:`QuantModel` wraps) with every wrapped module back in its own
    class: the FP32 model as it was before wrapping (same state dict, timm's own forward passes), e.g. to export it."""
    base = {quant: cls for cls, quant in _QUANT_CLASSES.items()}
    out = copy.deepcopy(model)
    for m in out.modules():
        if type(m) in base:
            m.__class__ = base[type(m)]
    return out
