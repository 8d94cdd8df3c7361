"""Paper eqs. 2-6 on hand-computed cases, and the in-place QuantModel."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hysquant_rl.errors import HySquantError
from hysquant_rl.inventory import inventory
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
    units, _ = inventory(model, (1, 32, 32))
    qm = QuantModel(model, [l.name for l in units], granularity)
    torch.manual_seed(1)
    qm.calibrate([torch.randn(16, 1, 32, 32) for _ in range(2)])
    return qm


def _unfused(model):
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    return model


@pytest.mark.parametrize("scope", ["linear", "hybrid"])
def test_fp32_policy_is_bit_identical(fresh_small_model, scope):
    """Every unit at FP32: the linear scope equals the model as it was (fused attention); the hybrid scope, which
    runs the attention matmuls explicitly, equals timm's unfused path bit for bit and the fused one within 1e-5."""
    x = torch.randn(8, 1, 32, 32)
    fused = copy.deepcopy(fresh_small_model)
    unfused = _unfused(copy.deepcopy(fresh_small_model))
    keys = list(fresh_small_model.state_dict())
    units, _ = inventory(fresh_small_model, (1, 32, 32), scope)
    qm = QuantModel(fresh_small_model, [u.name for u in units])
    qm.calibrate([torch.randn(16, 1, 32, 32)])
    qm.apply_bits([(4, 4)] * len(qm.units))
    with torch.inference_mode():
        low = qm(x)
        qm.apply_bits([(32, 32)] * len(qm.units))
        if scope == "linear":
            assert torch.equal(qm(x), fused(x))
        else:
            assert torch.equal(qm(x), unfused(x))
            assert not torch.equal(unfused(x), fused(x))  # the two paths differ: the check above has teeth
            assert (qm(x) - fused(x)).abs().max() < 1e-5
        assert not torch.equal(low, fused(x))
    assert list(fresh_small_model.state_dict()) == keys  # no re-wrapping in the state dict


def test_policy_switch_reuses_calibration_and_cache(fresh_small_model):
    qm = _wrap(fresh_small_model)
    ranges = [(t.act_min.clone(), t.act_max.clone()) for t in qm.quantizers()]
    x = torch.randn(4, 1, 32, 32)
    with torch.inference_mode():
        qm.apply_bits([(4, 8)] * len(qm.units))
        a = qm(x)
        qm.apply_bits([(8, 8)] * len(qm.units))
        b = qm(x)
        qm.apply_bits([(4, 8)] * len(qm.units))
        assert torch.equal(qm(x), a) and not torch.equal(a, b)
    assert all(torch.equal(t.act_min, r[0]) and torch.equal(t.act_max, r[1]) for t, r in zip(qm.quantizers(), ranges))
    assert all(set(u._w_cache) == {4, 8} for u in qm.units if hasattr(u, "_w_cache"))


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
            qm.apply_bits([(4, 32)] * len(qm.units))
            errs.append((qm(x) - ref).pow(2).mean().item())
    assert errs[1] < errs[0]


def test_bad_bits_and_granularity(fresh_small_model):
    qm = _wrap(fresh_small_model)
    with pytest.raises(HySquantError, match="out of range"):
        qm.apply_bits([(9, 8)] * len(qm.units))
    with pytest.raises(HySquantError, match="out of range"):
        qm.apply_bits([(8, 1)] * len(qm.units))
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
    first = qm.units[0]
    assert first.act_hist.sum().item() == pytest.approx(n_inputs[0])
    tensors = qm.quantizers()
    for t in tensors:
        lo, hi = t.act_range(4)
        assert t.act_min <= lo <= hi <= t.act_max
    narrower = sum((t.act_range(4)[1] - t.act_range(4)[0]) < (t.act_max - t.act_min) for t in tensors)
    assert narrower > len(tensors) // 2
    with torch.inference_mode():
        assert torch.equal(qm(batches[0]), ref)


def test_bad_calibrator_settings_are_one_line():
    from hysquant_rl.settings import QuantSettings

    with pytest.raises(HySquantError, match=r"quant.calibrator='kl' is unknown: use one of minmax, percentile, mse"):
        QuantSettings.from_mapping({"calibrator": "kl"})
    for p in (0, -1, 100.5):
        with pytest.raises(HySquantError, match=r"quant.percentile=.* must be in \(0, 100\]"):
            QuantSettings.from_mapping({"calibrator": "percentile", "percentile": p})
    # linear-scope min-max LUT caches keep their key; the hybrid scope (the default) keys its options
    assert QuantSettings(scope="linear").key() == {"weight_granularity": "tensor"}
    assert QuantSettings().key() == {
        "weight_granularity": "tensor",
        "scope": "hybrid",
        "softmax": "uniform",
        "act_granularity": "tensor",
    }
    for key, value, choices in (
        ("scope", "all", "linear, hybrid"),
        ("softmax", "exp", "uniform, log2"),
        ("act_granularity", "row", "tensor, channel"),
        ("weight_granularity", "row", "tensor, channel"),
    ):
        with pytest.raises(HySquantError, match=rf"^quant.{key}='{value}' is unknown: use one of {choices}$"):
            QuantSettings.from_mapping({key: value})
    assert QuantSettings(calibrator="percentile", percentile=99.9).key()["percentile"] == 99.9


# -- the transformer's activation-only units ----------------------------------------------------------------
ATTN = "stages.2.1.transformer.0.attn"


def test_log2_beats_uniform_on_softmax_rows_at_4_bits():
    """ViT-like softmax rows (197 tokens, logits of std 1 and 2) are mostly small probabilities under one large
    maximum: 15 uniform steps over [0, max] round most of them to 0 or one step, power-of-two levels keep them. So
    log2 reconstructs the rows, and the attention output P v, more closely. (With a handful of tokens or very
    peaked rows uniform levels win instead: the choice is a setting, measured in the README.)"""
    from hysquant_rl.quant.calibrate import log2_fake_quantize

    g = torch.Generator().manual_seed(0)
    for std in (1.0, 2.0):
        p = (torch.randn(256, 197, generator=g) * std).softmax(-1)
        v = torch.randn(197, 32, generator=g)
        delta, zero = qparams(p.min(), p.max(), 4)
        uniform = fake_quantize(p.clone(), delta, zero, 4)
        log2 = log2_fake_quantize(p, 4)
        assert (log2 - p).pow(2).sum(-1).mean() < (uniform - p).pow(2).sum(-1).mean()
        assert ((log2 - p) @ v).pow(2).mean() < ((uniform - p) @ v).pow(2).mean()
        nonzero = log2[log2 > 0]
        assert torch.equal(nonzero, torch.exp2(torch.log2(nonzero).round()))  # exact powers of two
    # hand-checked codes: 0.3 -> round(1.74) = 2 -> 0.25; 2^-15 is code 15, the last; 2^-20 is beyond it -> 0
    assert log2_fake_quantize(torch.tensor([1.0, 0.3, 2.0**-15, 2.0**-20, 0.0]), 4).tolist() == [
        1.0,
        0.25,
        2.0**-15,
        0.0,
        0.0,
    ]


def test_attention_units_quantize_their_operands(fresh_small_model):
    """attention-qk quantizes the scaled q and k; attention-pv the probabilities (uniform or log2) and v: each at
    its own unit's bits, the others staying FP32; the two units change the output independently."""
    units, _ = inventory(fresh_small_model, (1, 32, 32))
    names = [u.name for u in units]
    qm = QuantModel(fresh_small_model, names, softmax="log2")
    qm.calibrate([torch.randn(16, 1, 32, 32, generator=torch.Generator().manual_seed(2))])
    attn = fresh_small_model.get_submodule(ATTN)
    qk, pv = qm.units[names.index(f"{ATTN}.qk")], qm.units[names.index(f"{ATTN}.pv")]
    assert qk is attn.qk_unit and pv is attn.pv_unit
    assert list(qk.quantizers()) == ["q", "k"] and list(pv.quantizers()) == ["p", "v"]
    assert pv.quantizers()["p"].levels == "log2" and pv.quantizers()["v"].levels == "uniform"
    q_range = qk.quantizers()["q"].act_max - qk.quantizers()["q"].act_min
    assert q_range > 0 and pv.quantizers()["v"].act_min is not None
    x = torch.randn(4, 1, 32, 32)
    fp = [(32, 32)] * len(units)
    outs = {}
    with torch.inference_mode():
        for which in ("qk", "pv"):
            bits = list(fp)
            bits[names.index(f"{ATTN}.{which}")] = (32, 3)
            qm.apply_bits(bits)
            outs[which] = qm(x)
        qm.apply_bits(fp)
        ref = qm(x)
    assert not torch.equal(outs["qk"], ref) and not torch.equal(outs["pv"], ref)
    assert not torch.equal(outs["qk"], outs["pv"])


def test_layernorm_input_per_channel_ranges(fresh_small_model):
    """act_granularity=channel: each layernorm-in unit keeps one range per channel of the residual stream (the
    channel extremes of what calibration saw); per tensor is their envelope. Per-channel ranges reconstruct the
    residual stream better at 4 bits, and the percentile rule runs per channel too."""
    units, _ = inventory(fresh_small_model, (1, 32, 32))
    names = [u.name for u in units]
    norm = "stages.2.1.transformer.0.norm1"
    batches = [torch.randn(16, 1, 32, 32, generator=torch.Generator().manual_seed(3))]
    per_channel = QuantModel(copy.deepcopy(fresh_small_model), names, act_granularity="channel")
    per_tensor = QuantModel(copy.deepcopy(fresh_small_model), names)
    for qm in (per_channel, per_tensor):
        qm.calibrate(batches)
    seen = []  # the stream entering the LayerNorm, as calibration saw it (every unit at FP32)
    module = fresh_small_model.get_submodule(norm)
    hook = module.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    with torch.inference_mode():
        fresh_small_model(batches[0])
    hook.remove()
    (x,) = seen
    ch = per_channel.units[names.index(norm)]
    tn = per_tensor.units[names.index(norm)]
    c = module.normalized_shape[0]
    assert ch.act_min.shape == (c,) and tn.act_min.dim() == 0
    assert torch.equal(ch.act_min.min(), tn.act_min) and torch.equal(ch.act_max.max(), tn.act_max)
    flat = x.reshape(-1, c)
    assert torch.equal(ch.act_min, flat.amin(0)) and torch.equal(ch.act_max, flat.amax(0))
    assert (ch.fake(x, 4) - x).pow(2).mean() < (tn.fake(x, 4) - x).pow(2).mean()
    pct = QuantModel(copy.deepcopy(fresh_small_model), names, "tensor", "percentile", 99.0, act_granularity="channel")
    pct.calibrate(batches)
    unit = pct.units[names.index(norm)]
    lo, hi = unit.act_range(4)
    assert unit.act_hist.shape == (c, 2048) and lo.shape == (c,)
    assert (unit.act_min <= lo).all() and (lo <= hi).all() and (hi <= unit.act_max).all()
