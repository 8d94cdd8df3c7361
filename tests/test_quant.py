"""Paper eqs. 2-6 on hand-computed cases, and the in-place QuantModel."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hysquant_rl.errors import HySquantError
from hysquant_rl.layers import inventory
from hysquant_rl.quant import QuantModel, dequantize, fake_quantize, qparams, quantize
from hysquant_rl.quant.calibrate import histogram, mse_range, percentile_range
from hysquant_rl.quant.quantizer import minmax


def roundtrip(x: torch.Tensor, bits: int):
    delta, zero = qparams(x.min(), x.max(), bits)
    q = quantize(x, delta, zero, bits)
    return delta.item(), zero.item(), q, dequantize(q, delta, zero)


def test_eight_bit_exact_grid():
    # [0, 2.55] at 8 bits: Delta = 2.55 / 255 = 0.01, Z = 0; grid points come back exactly.
    delta, zero, q, xh = roundtrip(torch.tensor([0.0, 0.01, 1.28, 2.55]), 8)
    assert delta == pytest.approx(0.01) and zero == 0
    assert q.tolist() == [0, 1, 128, 255]
    assert torch.allclose(xh, torch.tensor([0.0, 0.01, 1.28, 2.55]), atol=1e-6)


def test_two_bits_mixed_sign():
    # [-1, 1] at 2 bits: Delta = 2/3, Z = round(1.5) = 2 (half to even).
    # x/Delta = [-1.5, 0, 0.75, 1.5] -> round [-2, 0, 1, 2] -> +Z [0, 2, 3, 4] -> clamp [0, 2, 3, 3].
    delta, zero, q, xh = roundtrip(torch.tensor([-1.0, 0.0, 0.5, 1.0]), 2)
    assert delta == pytest.approx(2 / 3) and zero == 2
    assert q.tolist() == [0, 2, 3, 3]
    assert torch.allclose(xh, torch.tensor([-4 / 3, 0.0, 2 / 3, 2 / 3]), atol=1e-6)


def test_all_negative_tensor():
    # [-3, -1] at 2 bits: Delta = 2/3, Z = round(4.5) = 4 (unclamped, as eq. 4 defines it).
    # x/Delta = [-4.5, -3, -1.5] -> round [-4, -3, -2] -> +Z [0, 1, 2]; (q - 4) * 2/3 = [-8/3, -2, -4/3].
    delta, zero, q, xh = roundtrip(torch.tensor([-3.0, -2.0, -1.0]), 2)
    assert delta == pytest.approx(2 / 3) and zero == 4
    assert q.tolist() == [0, 1, 2]
    assert torch.allclose(xh, torch.tensor([-8 / 3, -2.0, -4 / 3]), atol=1e-6)


@pytest.mark.parametrize("c", [0.3, -0.7, 0.0])
def test_constant_tensor_is_exact(c):
    delta, zero, q, xh = roundtrip(torch.full((5,), c), 4)
    assert delta > 0
    assert torch.allclose(xh, torch.full((5,), c), atol=1e-7)
    assert 0 <= q.min() and q.max() <= 15


def test_fake_quantize_matches_equations():
    x = torch.randn(1000) * 3
    for bits in range(2, 9):
        delta, zero = qparams(x.min(), x.max(), bits)
        assert torch.equal(fake_quantize(x, delta, zero, bits), dequantize(quantize(x, delta, zero, bits), delta, zero))
        # rounding x/Delta and rounding Z each cost at most half a step
        assert (fake_quantize(x, delta, zero, bits) - x).abs().max() <= delta * (1 + 1e-5)


def test_per_channel_ranges():
    w = torch.tensor([[0.0, 1.0], [-2.0, 2.0]])
    lo, hi = minmax(w, per_channel=True)
    assert lo.flatten().tolist() == [0.0, -2.0] and hi.flatten().tolist() == [1.0, 2.0]
    delta, zero = qparams(lo, hi, 2)
    assert delta.flatten().tolist() == pytest.approx([1 / 3, 4 / 3])


def _wrap(model, granularity="tensor"):
    layers, _ = inventory(model, (1, 32, 32))
    qm = QuantModel(model, [l.name for l in layers], granularity)
    torch.manual_seed(1)
    qm.calibrate([torch.randn(16, 1, 32, 32) for _ in range(2)])
    return qm


def test_fp32_policy_is_bit_identical(fresh_small_model):
    x = torch.randn(8, 1, 32, 32)
    original = copy.deepcopy(fresh_small_model)
    keys = list(fresh_small_model.state_dict())
    qm = _wrap(fresh_small_model)
    qm.apply_bits([(4, 4)] * len(qm.layers))
    with torch.inference_mode():
        low = qm(x)
        qm.apply_bits([(32, 32)] * len(qm.layers))
        assert torch.equal(qm(x), original(x))
        assert not torch.equal(low, original(x))
    assert list(fresh_small_model.state_dict()) == keys  # no re-wrapping in the state dict


def test_policy_switch_reuses_calibration_and_cache(fresh_small_model):
    qm = _wrap(fresh_small_model)
    ranges = [(l.act_min.clone(), l.act_max.clone()) for l in qm.layers]
    x = torch.randn(4, 1, 32, 32)
    with torch.inference_mode():
        qm.apply_bits([(4, 8)] * len(qm.layers))
        a = qm(x)
        qm.apply_bits([(8, 8)] * len(qm.layers))
        b = qm(x)
        qm.apply_bits([(4, 8)] * len(qm.layers))
        assert torch.equal(qm(x), a) and not torch.equal(a, b)
    assert all(torch.equal(l.act_min, r[0]) and torch.equal(l.act_max, r[1]) for l, r in zip(qm.layers, ranges))
    assert all(set(l._w_cache) == {4, 8} for l in qm.layers)


def test_layer_forward_equals_equations():
    torch.manual_seed(0)
    lin = nn.Linear(6, 3)
    ref_w, ref_b = lin.weight.detach().clone(), lin.bias.detach().clone()
    model = nn.Sequential(lin)
    qm = QuantModel(model, ["0"], "channel")
    calib = torch.randn(32, 6)
    qm.calibrate([calib])
    qm.apply_bits([(3, 5)])
    x = torch.randn(4, 6)
    lo, hi = minmax(ref_w, per_channel=True)
    dw, zw = qparams(lo, hi, 3)
    da, za = qparams(calib.min(), calib.max(), 5)
    expect = nn.functional.linear(
        dequantize(quantize(x, da, za, 5), da, za), dequantize(quantize(ref_w, dw, zw, 3), dw, zw), ref_b
    )
    with torch.inference_mode():
        assert torch.allclose(qm(x), expect, atol=1e-6)


def test_per_channel_is_finer(fresh_small_model, small_model):
    x = torch.randn(8, 1, 32, 32)
    with torch.inference_mode():
        ref = small_model(x)
        errs = []
        for g in ("tensor", "channel"):
            qm = _wrap(copy.deepcopy(small_model), g)
            qm.apply_bits([(4, 32)] * len(qm.layers))
            errs.append((qm(x) - ref).pow(2).mean().item())
    assert errs[1] < errs[0]


def test_bad_bits_and_granularity(fresh_small_model):
    qm = _wrap(fresh_small_model)
    with pytest.raises(HySquantError, match="out of range"):
        qm.apply_bits([(9, 8)] * len(qm.layers))
    with pytest.raises(HySquantError, match="out of range"):
        qm.apply_bits([(8, 1)] * len(qm.layers))
    with pytest.raises(HySquantError, match="weight_granularity"):
        QuantModel(nn.Sequential(nn.Linear(2, 2)), ["0"], "row")


# -- calibrators -------------------------------------------------------------------------------------------


def _planted() -> torch.Tensor:
    """A seeded bell of 200k values with five planted outliers far out (0.0025 % of the mass)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200_000, generator=g)
    x[:5] = torch.tensor([40.0, -35.0, 50.0, 45.0, -38.0])
    return x


def _error(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> float:
    delta, zero = qparams(lo, hi, bits)
    return (fake_quantize(x.clone(), delta, zero, bits) - x).pow(2).mean().item()


def test_percentile_and_mse_beat_minmax_on_outliers():
    x = _planted()
    lo, hi = x.min(), x.max()
    hist = histogram(x, lo, hi)
    assert hist.sum().item() == x.numel()
    p_lo, p_hi = percentile_range(hist, lo, hi, 99.99)
    m_lo, m_hi = mse_range(hist, lo, hi, 4)
    minmax_err = _error(x, lo, hi, 4)
    # the 0.01 % tails of a standard normal are near +-3.7: the outliers are clipped, the bell keeps its levels
    assert -4.5 < p_lo.item() < -3.0 and 3.0 < p_hi.item() < 4.5
    assert _error(x, p_lo, p_hi, 4) < 0.5 * minmax_err
    assert _error(x, m_lo, m_hi, 4) < 0.5 * minmax_err
    assert percentile_range(hist, lo, hi, 100.0) == (lo, hi)  # p = 100 is min-max


def test_mse_range_depends_on_bits_and_never_loses_to_minmax():
    x = torch.randn(50_000, generator=torch.Generator().manual_seed(1)) ** 3  # heavy tails, no planted points
    lo, hi = x.min(), x.max()
    hist = histogram(x, lo, hi)
    ranges = {b: mse_range(hist, lo, hi, b) for b in (2, 4, 8)}
    widths = {b: (r[1] - r[0]).item() for b, r in ranges.items()}
    assert widths[2] < widths[4] <= widths[8] <= (hi - lo).item()  # fewer levels: clip harder
    for b, (a, c) in ranges.items():
        assert _error(x, a, c, b) <= _error(x, lo, hi, b) * (1 + 1e-6)


@pytest.mark.parametrize("calibrator", ["percentile", "mse"])
def test_calibrators_in_the_model(fresh_small_model, calibrator):
    """A second calibration pass records a histogram over each layer's min-max range; the quantizer's range is the
    calibrator's, inside min-max; FP32 stays bit-identical."""
    batches = [torch.randn(8, 1, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    qm = QuantModel(
        fresh_small_model,
        [l.name for l in inventory(fresh_small_model, (1, 32, 32))[0]],
        calibrator=calibrator,
        percentile=99.0,
    )
    with torch.inference_mode():
        ref = qm(batches[0])
    qm.calibrate(batches)
    n_inputs = [sum(b.numel() for b in batches)]  # the first layer sees the images themselves
    first = qm.layers[0]
    assert first.act_hist.sum().item() == pytest.approx(n_inputs[0])
    for layer in qm.layers:
        lo, hi = layer.act_range(4)
        assert layer.act_min <= lo <= hi <= layer.act_max
    narrower = sum((l.act_range(4)[1] - l.act_range(4)[0]) < (l.act_max - l.act_min) for l in qm.layers)
    assert narrower > len(qm.layers) // 2
    with torch.inference_mode():
        assert torch.equal(qm(batches[0]), ref)


def test_bad_calibrator_settings_are_one_line():
    from hysquant_rl.settings import QuantSettings

    with pytest.raises(HySquantError, match=r"quant.calibrator='kl' is unknown: use one of minmax, percentile, mse"):
        QuantSettings.from_mapping({"calibrator": "kl"})
    for p in (0, -1, 100.5):
        with pytest.raises(HySquantError, match=r"quant.percentile=.* must be in \(0, 100\]"):
            QuantSettings.from_mapping({"calibrator": "percentile", "percentile": p})
    assert QuantSettings().key() == {"weight_granularity": "tensor"}  # min-max LUT caches keep their key
    assert QuantSettings(calibrator="percentile", percentile=99.9).key()["percentile"] == 99.9
