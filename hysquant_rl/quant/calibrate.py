"""Activation calibrators (``quant.calibrator``; the choices: :data:`hysquant_rl.settings.CALIBRATORS`): the range
``[lo, hi]`` a tensor's quantizer covers, from what calibration observed.

* ``minmax`` (the paper's eqs. 2-6, the default): the observed minimum and maximum.
* ``percentile``: the ``(100 - p)``-th and ``p``-th percentiles, so that the rare outliers beyond them are clipped
  and the levels go to where the values are.
* ``mse``: per bit-width, the range whose quantization of the observed distribution has the least mean squared
  error (clipping error against rounding error), searched over candidate ranges.

Both non-default rules read a histogram of the tensor's values over its min-max range (:data:`BINS` bins),
recorded in a second calibration pass: memory stays constant however many images calibrate. Per-channel ranges
(``quant.act_granularity=channel``: ``lo``/``hi`` of shape (C,), channels on the last dim) keep one histogram
per channel, (C, BINS), and every rule runs per channel.

:func:`log2_fake_quantize` is the softmax probabilities' alternative to uniform levels (``quant.softmax=log2``,
FQ-ViT): levels at powers of two, which need no calibration.
"""

from __future__ import annotations

import torch

from hysquant_rl.quant.quantizer import fake_quantize, qparams

BINS = 2048
_TAILS = torch.tensor([0.0, 1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2])  # mass cut per side
_SHRINK = torch.linspace(0.3, 1.0, 29)  # min-max range scaled towards 0


def histogram(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Counts (BINS,) float64 of ``x`` over ``[lo, hi]`` (values outside are not counted); per channel (C, BINS)
    when ``lo``/``hi`` have shape (C,) (``x``'s last dim; values outside are clamped into the end bins)."""
    if lo.dim() == 1:
        flat = x.detach().float().reshape(-1, lo.numel())
        width = (hi - lo).clamp_min(1e-30)
        idx = ((flat - lo) / width * BINS).floor_().clamp_(0, BINS - 1).long()
        idx += torch.arange(lo.numel(), device=idx.device) * BINS
        return torch.bincount(idx.flatten(), minlength=lo.numel() * BINS).reshape(lo.numel(), BINS).double()
    if float(hi) <= float(lo):
        out = torch.zeros(BINS, dtype=torch.float64)
        out[0] = x.numel()
        return out
    return torch.histc(x.detach().float().flatten(), bins=BINS, min=float(lo), max=float(hi)).double()


def _quantiles(hist: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Values at cumulative fractions ``q`` of the histogram, linear inside a bin."""
    cdf = torch.cumsum(hist, 0) / hist.sum().clamp_min(1.0)
    edges = torch.linspace(float(lo), float(hi), BINS + 1, dtype=torch.float64)
    idx = torch.searchsorted(cdf, q.double().clamp(0, 1)).clamp(max=BINS - 1)
    below = torch.where(idx > 0, cdf[(idx - 1).clamp(min=0)], torch.zeros_like(q, dtype=torch.float64))
    inside = ((q.double() - below) / (cdf[idx] - below).clamp_min(1e-300)).clamp(0, 1)
    return edges[idx] + inside * (edges[idx + 1] - edges[idx])


def percentile_range(
    hist: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, percentile: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[(100 - p)-th, p-th percentile]`` of the histogram; ``p = 100`` is the min-max range."""
    if percentile >= 100.0:
        return lo, hi
    if hist.dim() == 2:
        return _per_channel(lambda h, a, b: percentile_range(h, a, b, percentile), hist, lo, hi)
    tail = torch.tensor([(100.0 - percentile) / 100.0, percentile / 100.0])
    a, b = _quantiles(hist, lo, hi, tail)
    return a.float().reshape(lo.shape), b.float().reshape(hi.shape)


def mse_range(hist: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidate range whose ``bits``-bit quantization of the histogram's bin centres has the least count-weighted
    squared error. Candidates: the min-max range scaled towards 0, and the ranges that cut a small mass off each
    tail; the min-max range is one of them, so the result is never worse than min-max on the histogram."""
    if hist.dim() == 2:
        return _per_channel(lambda h, a, b: mse_range(h, a, b, bits), hist, lo, hi)
    lo64, hi64 = lo.double(), hi.double()
    width = (hi64 - lo64) / BINS
    centres = lo64 + width * (torch.arange(BINS, dtype=torch.float64) + 0.5)
    tails = _quantiles(hist, lo, hi, torch.cat([_TAILS, 1 - _TAILS]))
    n = len(_TAILS)
    cand_lo = torch.cat([lo64 * _SHRINK.double(), tails[:n]])
    cand_hi = torch.cat([hi64 * _SHRINK.double(), tails[n:]])
    delta, zero = qparams(cand_lo, cand_hi, bits)
    x = centres.float()[None, :]
    err = (fake_quantize(x.expand(len(cand_lo), -1).clone(), delta[:, None], zero[:, None], bits) - x).double()
    cost = (err.square() * hist[None, :]).sum(1)
    best = int(torch.argmin(cost))
    return cand_lo[best].float().reshape(lo.shape), cand_hi[best].float().reshape(hi.shape)


def _per_channel(rule, hist: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``rule`` applied to each channel's histogram row; ranges of shape (C,)."""
    out = [rule(h, a, b) for h, a, b in zip(hist, lo, hi)]
    return torch.stack([a for a, _ in out]), torch.stack([b for _, b in out])


def log2_fake_quantize(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Power-of-two levels for values in [0, 1] (softmax probabilities; FQ-ViT's log2 quantizer): the code is
    ``q = round(-log2 x)``, the value ``2^-q``; codes beyond ``2^bits - 1`` (and x = 0) become 0."""
    q = torch.log2(x).neg_().round_()
    out = torch.exp2(-q.clamp(0, 2**bits - 1))
    return out.masked_fill_(q > 2**bits - 1, 0.0)
