"""The quantizer's operations as ONNX QDQ nodes: what a quantized unit becomes in ``torch.onnx.export``.

Each function here is an autograd ``Function`` whose ``forward`` computes exactly what evaluation computes (the
same :func:`~hysquant_rl.quant.quantizer.fake_quantize`, or the cached dequantized weight) and whose ``symbolic``
writes the ONNX nodes for it. :mod:`hysquant_rl.quant.model` calls them only while ``torch.onnx.is_in_onnx_export()``
is true, so evaluation never pays for them.

Activations (eqs. 2-6 at ``b`` bits, zero point ``Z``)::

    QuantizeLinear(x, Delta, Z) -> Clip(codes, 0, 2^b - 1) -> DequantizeLinear(codes, Delta, Z)

in a uint8 container (the Clip only below 8 bits: QuantizeLinear saturates to [0, 255]). The paper's eq. 4 does
not clamp ``Z``: a range entirely above 0 has ``Z < 0`` (entirely below 0, ``Z > 2^b - 1``), which a uint8 zero
point cannot hold. Such a tensor is shifted by a whole number ``c = Z - clamp(Z, 0, 255)`` of steps: ``x + c Delta``
is quantized with ``Z - c`` and ``c Delta`` is subtracted after dequantization, the same codes and values up to
float rounding of the shift (covered by the export's tests against onnxruntime).

Weights: ``DequantizeLinear`` of the stored integer codes (uint8 initializers, one code per byte inside the
``2^b`` range), per tensor or per output channel (``axis=0``), with the same shift where a ``Z`` leaves [0, 255].

Softmax probabilities with log2 levels (``quant.softmax=log2``) have no QDQ form: they are written as the float
ops of :func:`~hysquant_rl.quant.calibrate.log2_fake_quantize` (not an integer kernel anywhere).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from hysquant_rl.quant.calibrate import log2_fake_quantize
from hysquant_rl.quant.quantizer import fake_quantize

UINT8_MAX = 255


def _shift(zero: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The zero point a uint8 container holds, ``clamp(Z, 0, 255)``, and the whole steps ``c = Z - that``."""
    held = zero.clamp(0, UINT8_MAX)
    return held, zero - held


def _constant(g: Any, value: torch.Tensor) -> Any:
    return g.op("Constant", value_t=value)


def _axis_shape(t: torch.Tensor, axis: int | None) -> torch.Tensor:
    """A per-axis parameter as ONNX wants it: 1-D along ``axis``, a scalar per tensor."""
    return t.reshape(-1) if axis is not None else t.reshape(())


class QuantizeDequantize(torch.autograd.Function):
    """An activation fake-quantized at ``bits`` with (Delta, Z); ``axis`` of per-channel parameters or None."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, delta: torch.Tensor, zero: torch.Tensor, bits: int, axis: Any) -> Any:
        return fake_quantize(x, delta, zero, bits)

    @staticmethod
    def symbolic(g: Any, x: Any, delta: Any, zero: Any, bits: int, axis: Any) -> Any:
        d, z = _values(delta), _values(zero)
        held, c = _shift(z)
        scale = _constant(g, _axis_shape(d, axis).float())
        zp = _constant(g, _axis_shape(held, axis).to(torch.uint8))
        kw = {} if axis is None else {"axis_i": axis}
        shifted = bool((c != 0).any())
        step = _constant(g, (c * d).float().reshape(d.shape)) if shifted else None
        if shifted:
            x = g.op("Add", x, step)
        codes = g.op("QuantizeLinear", x, scale, zp, **kw)
        if bits < 8:
            low, high = torch.tensor(0, dtype=torch.uint8), torch.tensor(2**bits - 1, dtype=torch.uint8)
            codes = g.op("Clip", codes, _constant(g, low), _constant(g, high))
        out = g.op("DequantizeLinear", codes, scale, zp, **kw)
        return g.op("Sub", out, step) if shifted else out


class Log2Quantize(torch.autograd.Function):
    """Probabilities with power-of-two levels at ``bits`` (float ops in ONNX)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, bits: int) -> Any:
        return log2_fake_quantize(x, bits)

    @staticmethod
    def symbolic(g: Any, x: Any, bits: int) -> Any:
        top = float(2**bits - 1)
        ln2 = _constant(g, torch.tensor(math.log(2.0)))
        q = g.op("Round", g.op("Neg", g.op("Div", g.op("Log", x), ln2)))
        kept = g.op("Clip", q, _constant(g, torch.tensor(0.0)), _constant(g, torch.tensor(top)))
        value = g.op("Pow", _constant(g, torch.tensor(2.0)), g.op("Neg", kept))
        beyond = g.op("Greater", q, _constant(g, torch.tensor(top)))
        return g.op("Where", beyond, _constant(g, torch.tensor(0.0)), value)


class DequantizedWeight(torch.autograd.Function):
    """A layer's quantized weight: the cached dequantized tensor in PyTorch, ``DequantizeLinear`` of the integer
    codes in ONNX: ``codes`` (uint8, the weight's shape), Delta and Z (scalars or per output channel), cached
    before the export traces the model, so that they are constants of the graph."""

    @staticmethod
    def forward(
        ctx: Any, weight: torch.Tensor, codes: torch.Tensor, delta: torch.Tensor, zero: torch.Tensor, axis: Any
    ) -> Any:
        return weight.clone()

    @staticmethod
    def symbolic(g: Any, weight: Any, codes: Any, delta: Any, zero: Any, axis: Any) -> Any:
        q, d, z = _values(codes), _values(delta), _values(zero)
        held, c = _shift(z)
        kw = {} if axis is None else {"axis_i": axis}
        out = g.op(
            "DequantizeLinear",
            _constant(g, q.to(torch.uint8)),
            _constant(g, _axis_shape(d, axis).float()),
            _constant(g, _axis_shape(held, axis).to(torch.uint8)),
            **kw,
        )
        if bool((c != 0).any()):
            out = g.op("Sub", out, _constant(g, (c * d).float().reshape(d.shape)))
        return out


def _values(v: Any) -> torch.Tensor:
    """The tensor behind a constant graph value: a quantizer's parameters, cached before the export traced the
    model, are constants of the graph."""
    from torch.onnx import symbolic_helper

    value = symbolic_helper._maybe_get_const(v, "t")
    if not isinstance(value, torch.Tensor):
        raise RuntimeError(f"a quantization parameter is not a constant of the exported graph: {v}")
    return value
