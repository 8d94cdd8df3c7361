"""Asymmetric uniform min-max quantization, paper eqs. 2-6.

    Delta = (max - min) / (2^n - 1)                         (eq. 3)
    Z     = round(-min / Delta)                             (eq. 4)
    q     = clamp(round(x / Delta) + Z, 0, 2^n - 1)         (eqs. 2, 5)
    x_hat = (q - Z) * Delta                                 (eq. 6)

``round`` is torch's round-half-to-even. Z is kept as an unclamped integer, as the equations define it, so
an all-positive or all-negative range keeps its full resolution. A constant tensor (max == min) would give
Delta = 0; its range is widened to include 0, which makes it exactly representable (Z = 0 or 2^n - 1).
"""

from __future__ import annotations

import torch


def qparams(xmin: torch.Tensor, xmax: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale Delta and zero point Z for ranges ``[xmin, xmax]`` (any matching shapes, e.g. per channel).

    Returns float Delta and integer-valued float Z of the same shape as ``xmin``.
    """
    xmin = xmin.double()
    xmax = xmax.double()
    flat = xmax == xmin
    lo = torch.where(flat, torch.clamp(xmin, max=0.0), xmin)
    hi = torch.where(flat, torch.clamp(xmax, min=0.0), xmax)
    delta = (hi - lo) / (2**bits - 1)
    delta = torch.where(delta > 0, delta, torch.ones_like(delta))  # all-zero tensor: any Delta is exact
    zero = torch.round(-lo / delta)
    return delta.float(), zero.float()


def quantize(x: torch.Tensor, delta: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes q in [0, 2^bits - 1] (eqs. 2, 5), as a float tensor; delta/zero broadcast against x."""
    return torch.clamp(torch.round(x / delta) + zero, 0, 2**bits - 1)


def dequantize(q: torch.Tensor, delta: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Real values (q - Z) * Delta (eq. 6)."""
    return (q - zero) * delta


def fake_quantize(x: torch.Tensor, delta: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """quantize then dequantize with in-place ops (the hot path of every evaluation): ``(clamp(round(x / Delta) + Z,
    0, 2^n - 1) - Z) * Delta`` computed as ``clamp(round(x / Delta), -Z, 2^n - 1 - Z) * Delta``, the same numbers
    (integers below 2^24 add and subtract exactly in float32) in four passes over ``x`` instead of six."""
    return torch.div(x, delta).round_().clamp_(-zero, (2**bits - 1) - zero).mul_(delta)


def minmax(x: torch.Tensor, per_channel: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of ``x``: scalars, or per output channel (dim 0) shaped to broadcast against ``x``."""
    if not per_channel:
        return x.min(), x.max()
    flat = x.reshape(x.shape[0], -1)
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    return flat.min(dim=1).values.reshape(shape), flat.max(dim=1).values.reshape(shape)
