"""Device profiles and the cost model (modelled backend); the measured backend where CUDA is present."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hysquant_rl.bits import CHOICES
from hysquant_rl.deploy.cuda import MeasuredCostModel
from hysquant_rl.errors import HySquantError
from hysquant_rl.hardware import CostModel, known_profiles, load_profile
from hysquant_rl.inventory import inventory

PROFILES = ("rtx3080", "a100", "h200")


@pytest.fixture(scope="module")
def xxs_model():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model("mobilevit_xxs", num_classes=10, in_chans=1).eval()


@pytest.fixture(scope="module", params=["linear", "hybrid"])
def xxs(xxs_model, request):
    """The units and float attention matmuls under each quantization scope."""
    return inventory(xxs_model, (1, 32, 32), request.param)


@pytest.fixture(scope="module")
def tiny():
    """A conv (3 -> 8, 3x3, pad 1, bias) on a 3x4x4 image, then a Linear 128 -> 10 (bias)."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(128, 10))
    return inventory(model, (3, 4, 4))


# -- profiles ----------------------------------------------------------------------------------------------


def test_known_profiles_are_the_config_group():
    from omegaconf import OmegaConf

    assert set(PROFILES) <= set(known_profiles())
    conf = Path(__file__).resolve().parent.parent / "conf" / "hardware"
    for name in known_profiles():
        p = load_profile(name)
        assert p.name == name and p.batch_size == 1 and p.backend == "modelled"
        group = OmegaConf.to_container(OmegaConf.load(conf / f"{name}.yaml"), resolve=True)
        assert load_profile(group) == p  # as an app hands the group over


def test_rtx3080_has_the_papers_constants():
    p = load_profile("rtx3080")
    assert p.peak_ops["fp32"] == 28.77e12
    assert (p.max_power_w, p.memory_power_w, p.compute_power_w) == (320.0, 80.0, 240.0)
    assert p.peak_ops["int4"] == 476e12 and p.memory_bandwidth == 760e9


def test_h200_has_no_int4():
    p = load_profile("h200")
    assert "int4" not in p.peak_ops
    assert p.integer_precisions == ((8, "int8"),)


def test_unknown_profile_lists_known_names():
    for bad in ("h100", {"name": "h100"}, {"batch_size": 4}):
        with pytest.raises(HySquantError) as err:
            load_profile(bad)
        for name in PROFILES:
            assert name in str(err.value)


def test_mapping_overrides_a_named_profile():
    p = load_profile({"name": "a100", "batch_size": 64})
    assert p.batch_size == 64 and p.peak_ops == load_profile("a100").peak_ops
    full = load_profile("h200").to_dict() | {"name": "my-gpu"}
    assert load_profile(full).name == "my-gpu"  # a complete mapping may describe any device


@pytest.mark.parametrize(
    "override, words",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"backend": "guessed"}, "backend"),
        ({"peak_ops": {"fp16": 1e12, "int9x": 1e12}}, "int9x"),
        ({"memory_power_w": 500.0}, "memory_power_w"),
        ({"deployable_activation_bits": [4, 9]}, "deployable_activation_bits"),
        ({"float_precision": "int8"}, "float_precision"),
        ({"typo_field": 1}, "typo_field"),
    ],
)
def test_bad_profile_fields_are_one_line_errors(override, words):
    with pytest.raises(HySquantError, match=words):
        load_profile({"name": "rtx3080", **override})


def test_compute_precision_and_deployability_rules():
    rtx, h200 = load_profile("rtx3080"), load_profile("h200")
    assert rtx.compute_precision(4, 4) == "int4" and rtx.compute_precision(2, 3) == "int4"
    assert rtx.compute_precision(4, 8) == "int8" and rtx.compute_precision(6, 6) == "int8"
    assert rtx.compute_precision(32, 8) == "fp16" and rtx.compute_precision(32, 32) == "fp16"
    assert h200.compute_precision(4, 4) == "int8"
    assert rtx.is_deployable(4, 4) and rtx.is_deployable(4, 8) and rtx.is_deployable(8, 8)
    assert rtx.is_deployable(4, 32) and rtx.is_deployable(32, 32)  # weight-only; float model
    assert not rtx.is_deployable(6, 6) and not rtx.is_deployable(32, 8)
    assert h200.is_deployable(8, 8) and h200.is_deployable(4, 8) and h200.is_deployable(4, 32)
    assert not h200.is_deployable(4, 4) and not h200.is_deployable(8, 4)


# -- hand-priced layers ------------------------------------------------------------------------------------


def test_conv_priced_by_hand_on_rtx3080(tiny):
    units, _ = tiny
    cm = CostModel(*tiny, load_profile("rtx3080"))
    c = cm.unit_cost(0, 8, 8, consumer_quantized=True)
    # conv 3->8, 3x3 on 4x4 (pad 1): 216 weights + 8 biases; MACs = 16 px * 8 out * 27 = 3456
    assert units[0].macs == 3456 and units[0].weight_elems == 216 and units[0].params == 224
    # W8A8 -> int8 tensor cores, 238e12 op/s; ops = 2 * 3456 = 6912
    assert c.precision == "int8" and c.deployable and c.batch_size == 1
    assert c.ops == 6912
    assert c.compute_s == pytest.approx(6912 / 238e12)
    # bytes = weights 216 * 1 + bias 8 * 4 + input 48 * 1 + output 128 * 1 (consumer quantizes) = 424
    assert c.bytes_moved == 424
    assert c.memory_s == pytest.approx(424 / 760e9)
    assert c.latency_s == pytest.approx(424 / 760e9 + 4e-6) and c.bound == "memory"  # + one kernel's 4 us
    # energy = (320 - 80) W / 238e12 op/s * 6912 op + 80 W * 424 B / 760e9 B/s
    assert c.energy_j == pytest.approx(240 / 238e12 * 6912 + 80 * 424 / 760e9)
    assert c.energy_j == pytest.approx(5.1602e-8, rel=1e-4)
    assert c.size_bytes == 216 + 32 and c.bitops == 3456 * 8 * 8
    # the same conv writing fp16 for an unquantized consumer: output 128 * 2 bytes
    assert cm.unit_cost(0, 8, 8, consumer_quantized=False).bytes_moved == 424 + 128


def test_linear_priced_by_hand_on_rtx3080(tiny):
    units, _ = tiny
    cm = CostModel(*tiny, load_profile("rtx3080"))
    c = cm.unit_cost(1, 4, 4, consumer_quantized=False)
    assert units[1].macs == 1280 and units[1].params == 1290
    # W4A4 -> int4 tensor cores, 476e12 op/s; ops = 2 * 1280 = 2560
    assert c.precision == "int4" and c.deployable
    assert c.compute_s == pytest.approx(2560 / 476e12)
    # bytes = weights 1280 * 0.5 + bias 10 * 4 + input 128 * 0.5 + fp16 logits 10 * 2 = 764
    assert c.bytes_moved == 764
    assert c.latency_s == pytest.approx(764 / 760e9 + 4e-6)  # + one kernel's 4 us
    assert c.energy_j == pytest.approx(240 / 476e12 * 2560 + 80 * 764 / 760e9)
    assert c.size_bytes == 640 + 40 and c.bitops == 1280 * 4 * 4
    # at batch 64: weights once, activations 64 times: 680 + 64 * (64 + 20) = 6056 bytes, ops 64x
    c64 = CostModel(*tiny, load_profile("rtx3080"), batch_size=64).unit_cost(1, 4, 4, False)
    assert c64.bytes_moved == 6056 and c64.ops == 64 * 2560 and c64.batch_size == 64
    assert c64.size_bytes == c.size_bytes and c64.bitops == c.bitops  # per model / per image
    # FP32 layer: fp16 compute (119e12), fp16 traffic, 4-byte parameters in the size
    fp = cm.unit_cost(1, 32, 32, False)
    assert fp.precision == "fp16" and fp.compute_s == pytest.approx(2560 / 119e12)
    assert fp.bytes_moved == 1280 * 2 + 40 + 128 * 2 + 20 and fp.size_bytes == 1290 * 4


def test_policy_prices_each_output_at_what_its_consumer_reads(tiny):
    cm = CostModel(*tiny, load_profile("rtx3080"))
    quantized = cm.policy_cost([(8, 8), (4, 4)])
    assert quantized.latency_s == pytest.approx(424 / 760e9 + 764 / 760e9 + 2 * 4e-6)  # two kernels
    assert quantized.fixed_latency_s == 0.0  # no attention in this model
    unquantized_consumer = cm.policy_cost([(8, 8), (4, 32)])
    assert unquantized_consumer.unit_latency_s[0] == pytest.approx((424 + 128) / 760e9 + 4e-6)


# -- whole-model properties --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PROFILES)
@pytest.mark.parametrize("batch", [1, 64])
def test_fewer_bits_never_cost_more(xxs, name, batch):
    cm = CostModel(*xxs, load_profile(name), batch_size=batch)
    metrics = ("latency_s", "energy_j", "size_bytes", "bitops")
    for i in range(cm.num_units):
        for consumer in (False, True):
            table = np.array(
                [[[getattr(cm.unit_cost(i, w, a, consumer), m) for m in metrics] for a in CHOICES] for w in CHOICES]
            )  # (w, a, metric), bits ascending
            assert (np.diff(table, axis=0) >= 0).all(), (cm.units[i].name, "weight bits")
            assert (np.diff(table, axis=1) >= 0).all(), (cm.units[i].name, "activation bits")
    # and across layers: the consumer's activation bits only ever lower the producer's cost
    uniform = [cm.uniform_cost(b, b) for b in CHOICES]
    for m in metrics:
        values = [getattr(u, m) for u in uniform]
        assert values == sorted(values), m
    assert uniform[CHOICES.index(4)].latency_s < uniform[CHOICES.index(8)].latency_s


def test_lowering_any_one_layer_never_raises_the_total(xxs):
    cm = CostModel(*xxs, load_profile("rtx3080"))
    rng = np.random.default_rng(0)
    choices = np.array(CHOICES)
    for _ in range(20):
        policy = choices[rng.integers(1, len(choices), size=(cm.num_units, 2))]
        before = cm.policy_cost(policy)
        i, col = rng.integers(cm.num_units), rng.integers(2)
        lower = policy.copy()
        lower[i, col] = choices[np.searchsorted(choices, policy[i, col]) - 1]
        after = cm.policy_cost(lower)
        assert after.latency_s <= before.latency_s and after.energy_j <= before.energy_j
        assert after.size_bytes <= before.size_bytes and after.bitops <= before.bitops


def test_w4a4_on_h200_computes_as_int8_and_is_simulation_only(xxs):
    h200 = CostModel(*xxs, load_profile("h200"))
    rtx = CostModel(*xxs, load_profile("rtx3080"))
    for i in range(h200.num_units):
        w4a4, w8a8 = h200.config_cost(i, 4, 4), h200.config_cost(i, 8, 8)
        assert w4a4.precision == w8a8.precision == "int8"
        assert w4a4.compute_s == w8a8.compute_s  # no cheaper in compute
        assert w4a4.bytes_moved < w8a8.bytes_moved  # but 4-bit traffic
        assert not w4a4.deployable and w8a8.deployable
        r = rtx.config_cost(i, 4, 4)
        assert r.precision == "int4" and r.deployable
        assert r.compute_s == pytest.approx(rtx.config_cost(i, 8, 8).compute_s / 2)
    assert not h200.uniform_cost(4, 4).deployable and h200.uniform_cost(4, 8).deployable
    assert rtx.uniform_cost(4, 4).deployable and not rtx.uniform_cost(6, 6).deployable
    mixed = [(8, 8)] * h200.num_units
    mixed[5] = (8, 4)
    cost = h200.policy_cost(mixed)
    assert not cost.deployable and cost.unit_deployable.sum() == h200.num_units - 1


@pytest.mark.parametrize("name", PROFILES)
@pytest.mark.parametrize("batch", [1, 64])
def test_uniform_policy_equals_sum_of_config_costs_plus_fixed(xxs, name, batch):
    cm = CostModel(*xxs, load_profile(name), batch_size=batch)
    hybrid = any(not l.weighted for l in xxs[0])
    if hybrid:  # the attention matmuls are units: nothing is left policy-independent
        assert cm.fixed_latency_s == 0 and cm.fixed_energy_j == 0 and xxs[1] == []
    else:
        assert cm.fixed_latency_s > 0 and cm.fixed_energy_j > 0  # the attention matmuls are priced
    assert len(cm.fixed_items) == len(xxs[1]) and all(c.precision == "fp16" for c in cm.fixed_items)
    for w, a in [(8, 8), (4, 8), (8, 4), (4, 4), (6, 6), (2, 2), (8, 32), (32, 32)]:
        policy = cm.uniform_cost(w, a)
        rows = [cm.config_cost(i, w, a) for i in range(cm.num_units)]
        assert policy.batch_size == batch and policy.device == name
        assert policy.latency_s == pytest.approx(sum(r.latency_s for r in rows) + cm.fixed_latency_s, rel=1e-12)
        assert policy.energy_j == pytest.approx(sum(r.energy_j for r in rows) + cm.fixed_energy_j, rel=1e-12)
        assert policy.size_bytes == pytest.approx(sum(r.size_bytes for r in rows), rel=1e-12)
        assert policy.bitops == sum(r.bitops for r in rows)
        assert policy.deployable == all(r.deployable for r in rows)
        np.testing.assert_allclose(policy.unit_latency_s, [r.latency_s for r in rows], rtol=1e-12)


def test_batch_1_is_memory_bound_and_batch_64_makes_compute_precision_matter(xxs):
    rtx = dataclasses.replace(load_profile("rtx3080"), kernel_overhead_s=0.0)  # the roofline alone
    int8_peaks = {k: v for k, v in rtx.peak_ops.items() if k != "int4"}
    no_int4 = dataclasses.replace(rtx, name="rtx3080-no-int4", peak_ops=int8_peaks)  # W4A4 computes as int8
    # batch 1: every layer is memory-bound and weights are most of the bytes moved
    one = CostModel(*xxs, rtx, batch_size=1)
    rows = [one.config_cost(i, 8, 8) for i in range(one.num_units)]
    assert all(r.bound == "memory" for r in rows)
    weight_bytes = sum(r.size_bytes for r in rows)  # at W8 the stored bytes are the bytes moved
    activation_bytes = sum(r.bytes_moved for r in rows) - weight_bytes
    assert weight_bytes > 3 * activation_bytes
    # so the compute precision cannot change latency: int4 or int8 tensor cores, same W4A4 latency
    assert one.uniform_cost(4, 4).latency_s == pytest.approx(
        CostModel(*xxs, no_int4, batch_size=1).uniform_cost(4, 4).latency_s, rel=1e-12
    )
    # batch 64: activations dominate, some layers turn compute-bound, and int4 tensor cores pay off
    many = CostModel(*xxs, rtx, batch_size=64)
    rows64 = [many.config_cost(i, 4, 4) for i in range(many.num_units)]
    assert sum(r.bytes_moved - r.size_bytes for r in rows64) > 5 * sum(r.size_bytes for r in rows64)
    assert any(r.bound == "compute" for r in rows64)
    as_int8 = CostModel(*xxs, no_int4, batch_size=64).uniform_cost(4, 4).latency_s
    assert many.uniform_cost(4, 4).latency_s < 0.99 * as_int8


def test_bad_queries_are_one_line_errors(xxs):
    cm = CostModel(*xxs, load_profile("rtx3080"))
    n = cm.num_units
    with pytest.raises(HySquantError, match=f"{n} layers"):
        cm.policy_cost([(8, 8)] * (n - 1))
    with pytest.raises(HySquantError, match="stem.conv activation bit-width 1"):
        cm.policy_cost([(8, 1)] + [(8, 8)] * (n - 1))
    with pytest.raises(HySquantError, match="integers"):
        cm.policy_cost([(8.0, 8.0)] * n)
    with pytest.raises(HySquantError):
        cm.unit_cost(n, 8, 8, True)
    with pytest.raises(HySquantError):
        cm.unit_cost(0, 9, 8, True)
    with pytest.raises(HySquantError, match="batch_size"):
        CostModel(*xxs, load_profile("rtx3080"), batch_size=0)


def test_policy_cost_is_fast(xxs):
    cm = CostModel(*xxs, load_profile("rtx3080"))
    policy = [(8, 8)] * cm.num_units
    start = time.perf_counter()
    for _ in range(1000):
        cm.policy_cost(policy)
    assert (time.perf_counter() - start) / 1000 < 2e-3  # ~0.1 ms; the search calls it thousands of times


def test_reports_carry_the_batch_size(xxs):
    cm = CostModel(*xxs, load_profile("a100"), batch_size=8)
    d = cm.uniform_cost(8, 8).to_dict()
    assert d["batch_size"] == 8 and len(d["unit_latency_s"]) == cm.num_units
    row = cm.config_cost(0, 8, 8).to_dict()
    assert row["batch_size"] == 8 and row["bound"] in ("compute", "memory")


# -- measured backend --------------------------------------------------------------------------------------


def test_measured_kernels_have_the_layers_shapes(xxs_model, xxs):
    """The kernels the measured backend times, built on the CPU: every layer's float kernel (padding inferred
    from the traced shapes) yields its traced output, Linear/Conv2d are told apart, attention keeps its shape."""
    from hysquant_rl.deploy.cuda import attention_kernel, float_kernel, is_linear

    units, matmuls = xxs
    modules = dict(xxs_model.named_modules())
    gen = torch.Generator().manual_seed(0)
    cpu = torch.device("cpu")
    for unit in (l for l in units if l.weighted):  # activation-only units are not timed
        assert is_linear(unit) == isinstance(modules[unit.name], nn.Linear), unit.name
        fn, _ = float_kernel(unit, 2, torch.float32, cpu, gen)
        assert fn().numel() == 2 * unit.out_elems, unit.name
    for m in matmuls:
        fn, _ = attention_kernel(m, 2, torch.float32, cpu, gen)
        assert fn().shape == (2 * m.sequences, m.heads, m.tokens, m.head_dim)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_measured_backend_without_cuda_says_what_to_do(tiny):
    with pytest.raises(HySquantError, match="needs a CUDA GPU; use hardware.backend=modelled"):
        MeasuredCostModel(*tiny, load_profile("rtx3080"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the measured backend needs a CUDA GPU")
def test_measured_backend_times_real_kernels(xxs):
    profile = load_profile("h200")
    cm = MeasuredCostModel(*xxs, profile, batch_size=4, warmup=3, repeats=10, energy_window_s=0.02)
    assert cm.backend == "measured" and cm.gpu_name
    assert len(cm.timed) == cm.num_units + len(xxs[1])
    for rec in cm.timed:
        assert rec["float"]["latency_s"] > 0
    policy = cm.uniform_cost(8, 8)
    assert policy.backend == "measured" and policy.batch_size == 4
    assert policy.latency_s > 0 and policy.energy_j > 0 and np.all(policy.unit_latency_s > 0)
    rows = [cm.config_cost(i, 8, 8) for i in range(cm.num_units)]
    assert policy.latency_s == pytest.approx(sum(r.latency_s for r in rows) + cm.fixed_latency_s, rel=1e-12)
    # a float pair is priced by the float kernel, an integer pair of a Linear by torch._int_mm when it ran
    linear = next(i for i, rec in enumerate(cm.timed[: cm.num_units]) if "latency_s" in rec["int8"])
    assert cm.config_cost(linear, 32, 32).latency_s == cm.timed[linear]["float"]["latency_s"]
    assert cm.config_cost(linear, 8, 8).latency_s == cm.timed[linear]["int8"]["latency_s"]
    # size, BitOps and deployability do not depend on the backend
    modelled = CostModel(*xxs, profile, batch_size=4).uniform_cost(4, 4)
    assert cm.uniform_cost(4, 4).size_bytes == modelled.size_bytes
    assert cm.uniform_cost(4, 4).deployable == modelled.deployable is False


# -- per-kernel overhead, Q/DQ boundaries, the cpu profile --------------------------------------------------


def _with(profile_name: str, **fields):
    return load_profile({**load_profile(profile_name).to_dict(), **fields})


def test_kernel_overhead_is_added_per_kernel_by_hand(tiny):
    """Conv + Linear, no attention: each unit is one kernel; other kernels and views of the model are fixed."""
    from hysquant_rl.units import OtherOps

    plain = CostModel(*tiny, _with("rtx3080", kernel_overhead_s=0.0))
    other = OtherOps(kernels=3, views=5)
    o = CostModel(*tiny, _with("rtx3080", kernel_overhead_s=1e-3, view_overhead_s=1e-4), other=other)
    for policy in ([(8, 8), (4, 4)], [(32, 32), (32, 32)], [(2, 6), (8, 32)]):
        extra = o.policy_cost(policy).latency_s - plain.policy_cost(policy).latency_s
        assert extra == pytest.approx(2 * 1e-3 + 3 * 1e-3 + 5 * 1e-4)  # 2 units + 3 other kernels + 5 views
        assert o.kernel_count(policy) == 2 + 3 and plain.kernel_count(policy) == 2  # views are counted apart
    assert o.fixed_latency_s == pytest.approx(3e-3 + 5e-4) and plain.fixed_latency_s == 0
    assert o.policy_cost([(8, 8), (4, 4)]).energy_j == plain.policy_cost([(8, 8), (4, 4)]).energy_j  # time only


def test_qdq_boundary_priced_by_hand(tiny):
    """A QDQ runtime (qdq_kernels 2, float32 compute): the conv's quantized 48-element input costs a Q and a DQ
    kernel, each moving it once in fp32 and once at a bits, at least 48 / rate seconds each; below 8 bits one more
    kernel clips the codes; a quantized conv weight outside integer_ops is dequantized on each run."""
    base = dict(float_precision="fp32", kernel_overhead_s=0.0, integer_ops=["conv2d", "linear", "matmul"])
    bw = load_profile("rtx3080").memory_bandwidth
    plain = CostModel(*tiny, _with("rtx3080", **base))
    qdq = CostModel(*tiny, _with("rtx3080", **{**base, "qdq_kernels": 2, "kernel_overhead_s": 1e-6}))
    d8 = qdq.unit_cost(0, 8, 8, True).latency_s - plain.unit_cost(0, 8, 8, True).latency_s
    assert d8 == pytest.approx(2 * 48 * (32 + 8) / 8 / bw + 3 * 1e-6)  # the conv's own kernel, Q and DQ
    d4 = qdq.unit_cost(0, 8, 4, True).latency_s - plain.unit_cost(0, 8, 4, True).latency_s
    assert d4 == pytest.approx(3 * 48 * (32 + 4) / 8 / bw + 4 * 1e-6)  # and the Clip
    slow = CostModel(*tiny, _with("rtx3080", **base, qdq_kernels=2, qdq_elements_per_s=1e6))
    d_slow = slow.unit_cost(0, 8, 8, True).latency_s - plain.unit_cost(0, 8, 8, True).latency_s
    assert d_slow == pytest.approx(2 * 48 / 1e6)  # element-bound: 96 conversions at 1e6 per second
    assert qdq.unit_cost(0, 32, 32, True).latency_s == pytest.approx(plain.unit_cost(0, 32, 32, True).latency_s + 1e-6)
    # conv outside integer_ops: float compute at dequantized_weight_speed, its weight dequantized by a kernel
    cpu_like = {**base, "integer_ops": ["linear", "matmul"], "qdq_kernels": 2, "dequantized_weight_speed": 0.25}
    f = CostModel(*tiny, _with("rtx3080", **cpu_like))
    c = f.unit_cost(0, 8, 8, True)
    assert c.precision == "fp32" and not c.deployable and f.kernels[0, CHOICES.index(8), CHOICES.index(8)] == 4
    assert c.compute_s == pytest.approx(6912 / load_profile("rtx3080").peak("fp32") / 0.25)
    assert f.unit_cost(0, 32, 32, True).deployable and f.unit_cost(1, 8, 8, True).deployable


def test_rtx3080_batch1_latency_is_at_least_the_launch_floor(xxs_model):
    """mobilevit_xxs (256 px): at least one launch per unit and per other kernel of the model (counted by an
    independent walk: one per Conv2d/Linear module call, three per attention, one per LayerNorm, one per
    activation module and per residual block), where the plain roofline said 1.6 us."""
    from hysquant_rl.inventory import other_ops

    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("mobilevit_xxs").eval()
    units, matmuls = inventory(model, (3, 256, 256))
    other = other_ops(model, (3, 256, 256))
    modules = list(model.modules())
    convs = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in modules)
    attention = sum(type(m).__name__ == "Attention" for m in modules)
    norms = sum(isinstance(m, nn.LayerNorm) for m in modules)
    acts = sum(isinstance(m, (nn.SiLU,)) for m in modules)
    floor = 4e-6 * (convs + 2 * attention + norms + acts)  # qk, softmax + pv: 2 more per attention
    cm = CostModel(units, matmuls, load_profile("rtx3080"), 1, other)
    w8a8 = cm.uniform_cost(8, 8).latency_s
    assert w8a8 >= floor > 5e-4
    assert CostModel(units, matmuls, _with("rtx3080", kernel_overhead_s=0.0), 1).uniform_cost(8, 8).latency_s < 1e-4


def test_other_ops_counts_kernels_and_views_by_hand():
    from hysquant_rl.inventory import other_ops

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.act = nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU()
            self.fc = nn.Linear(2 * 4 * 4, 3)

        def forward(self, x):
            y = self.act(self.bn(self.conv(x))) + x  # conv priced, BN folded, ReLU and + are kernels
            return self.fc(y.flatten(1).transpose(0, 1).transpose(0, 1))  # 3 views, Linear priced

    ops = other_ops(Block().eval(), (2, 4, 4))
    assert (ops.kernels, ops.views) == (2, 3)


def test_cpu_profile_and_bad_new_fields():
    cpu = load_profile("cpu")
    assert cpu.float_precision == "fp32" and cpu.qdq_kernels == 2 and "conv2d" not in cpu.integer_ops
    assert cpu.timing.repeats >= 30 and cpu.kernel_overhead_s > 0 and 0 < cpu.compute_efficiency <= 1
    for field, value, message in (
        ("kernel_overhead_s", -1, "kernel_overhead_s must be a number of seconds >= 0"),
        ("qdq_kernels", 1.5, "qdq_kernels must be an integer >= 0"),
        ("integer_ops", ["conv3d"], "integer_ops .* must list some of conv2d, linear, matmul"),
        ("dequantized_weight_speed", 0, r"dequantized_weight_speed must be in \(0, 1\]"),
        ("timing", {"repeats": 10}, "timing.repeats is 10; a median needs at least 30 runs"),
        ("timing", {"max_cv": -1}, "timing.max_cv must be a positive number"),
        ("timing", {"runs": 5}, "unknown timing field"),
        (
            "backend",
            "tensorrt",
            "backend 'tensorrt' is not one of modelled, measured, executorch, onnxruntime, openvino",
        ),
    ):
        with pytest.raises(HySquantError, match=message):
            load_profile({"name": "cpu", field: value})
